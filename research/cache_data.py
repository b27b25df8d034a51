import numpy as np, pickle
from common import *
te_x, te_y = load_rec('rec_test')
ca_x, ca_y = load_rec('rec_train', 600)
pickle.dump((te_x, te_y, ca_x, ca_y), open('/tmp/rq/recdata.pkl', 'wb'))
print(len(te_x), len(ca_x))
