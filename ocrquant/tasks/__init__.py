"""OCR tasks: det (DB), cls (0/180), rec (CTC); each preprocess, postprocess and metric."""

from ocrquant.tasks import cls as _cls  # noqa: F401
from ocrquant.tasks import craft as _craft  # noqa: F401
from ocrquant.tasks import det as _det  # noqa: F401
from ocrquant.tasks import rec as _rec  # noqa: F401
from ocrquant.tasks.base import TASKS, Batch, Metric, Task, get_task_class, make_config, register_task

__all__ = ["TASKS", "Batch", "Metric", "Task", "get_task_class", "make_config", "register_task"]
