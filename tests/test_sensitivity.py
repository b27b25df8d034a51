"""Sensitivity analysis and the mixed-precision search: semantics on a synthetic metric and on the
real PP-OCRv3 cls model with the embedded sample crops."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ocrquant.analysis.sensitivity import (
    Validator,
    VariantBuilder,
    analyze_layers,
)
from ocrquant.data import open_dataset, sample_calibration, sample_root
from ocrquant.data.split import split_calibration
from ocrquant.errors import OcrQuantError
from ocrquant.quantization import QuantConfig
from ocrquant.quantization.algorithms.hs_cle import GATE_SUFFIX
from ocrquant.tasks import get_task_class
from ocrquant.tuning import quantize
from ocrquant.tuning.budget import (
    BudgetConfig,
    _subset_caution,
    config_for,
    greedy_search,
    quantize_with_budget,
)
from ocrquant.tuning.method_search import calib_size_leaving_validation
from ocrquant.tuning.pair import quantize_pair
from ocrquant.zoo.resolve import resolve_model
from tests.conftest import sample_calib, zoo_model_path


# ------------------------------------------------------------------ the search, synthetic metric
def _metric(penalties: dict[str, float], calls: list[frozenset[str]]):
    """FP32 0.80 minus the penalty of every layer still quantized (not in the float set)."""

    def score(float_set: frozenset[str]) -> float:
        calls.append(float_set)
        return 0.80 - sum(p for name, p in penalties.items() if name not in float_set)

    return score


def test_greedy_search_meets_the_budget_and_prunes_a_useless_layer():
    penalties = {"A": 0.02, "B": 0.01, "C": 0.003, "D": 0.0, "E": 0.0}
    calls: list[frozenset[str]] = []
    # A poor ranking puts the harmless D first: the greedy pass takes it, the pruning pass drops it.
    chosen, steps, met = greedy_search(["D", "A", "B", "C", "E"], _metric(penalties, calls), 0.80, 1.0)
    assert met
    assert set(chosen) == {"A", "B"}
    assert [s.action for s in steps[:5]] == ["base", "feasibility", "add", "add", "add"]
    assert {s.layer: s.action for s in steps if s.action.startswith("prune")} == {
        "B": "prune-kept",
        "A": "prune-kept",
        "D": "prune-removed",
    }
    final_drop = 100 * (0.80 - (0.80 - penalties["C"]))
    assert final_drop <= 1.0
    assert all(s.within_budget == (s.drop_points <= 1.0 + 1e-9) for s in steps)
    assert len(calls) == len(set(calls))  # every distinct set scored once


def test_greedy_search_stops_at_once_when_int8_is_within_budget():
    calls: list[frozenset[str]] = []
    chosen, steps, met = greedy_search(["A", "B"], _metric({"A": 0.001, "B": 0.0}, calls), 0.80, 0.3)
    assert met and chosen == [] and [s.action for s in steps] == ["base"]


def test_greedy_search_reports_an_unreachable_budget():
    calls: list[frozenset[str]] = []
    chosen, steps, met = greedy_search(
        ["A", "B"], _metric({"A": 0.01, "B": 0.0, "Z": 0.05}, calls), 0.80, 1.0
    )
    assert not met and chosen == ["A", "B"] and steps[-1].drop_points == pytest.approx(5.0)
    assert [s.action for s in steps] == ["base", "feasibility"]  # given up after one evaluation


def test_greedy_search_within_a_layer_cap_tries_only_the_top_of_the_ranking():
    """The automatic escalation after ``auto`` keeps at most a share of the blocks float
    (``max_layers``): the budget needs three float layers, two are allowed, so the search says it is
    unmet after scoring the top two together, and never floats the third."""
    calls: list[frozenset[str]] = []
    penalties = {"A": 0.01, "B": 0.01, "C": 0.01}
    chosen, steps, met = greedy_search(["A", "B", "C"], _metric(penalties, calls), 0.80, 0.5, max_layers=2)
    assert not met and chosen == ["A", "B"]
    assert [s.action for s in steps] == ["base", "feasibility"]
    assert frozenset({"A", "B", "C"}) not in calls
    chosen, _, met = greedy_search(
        ["A", "B", "C"], _metric(penalties, []), 0.80, 0.5, max_layers=3, walk="bisect"
    )
    assert met and set(chosen) == {"A", "B", "C"}


def test_greedy_search_with_a_confidence_margin_wants_the_budget_to_hold_beyond_the_noise():
    """A is the big loss, B a small one that makes the drop uncertain (the INT8 model disagrees with
    FP32 on many samples while B is quantized). Floating A alone meets 0.3 pt on the point estimate;
    with a 90 % one-sided margin it does not, and the search also floats B."""
    penalties = {"A": 0.02, "B": 0.002, "C": 0.0}

    def spread(float_set: frozenset[str]) -> float:
        return 0.0 if "B" in float_set else 0.4

    z = 1.2816  # 90 % one-sided
    chosen, _, met = greedy_search(["A", "B", "C"], _metric(penalties, []), 0.80, 0.3)
    assert met and chosen == ["A"]
    chosen, steps, met = greedy_search(["A", "B", "C"], _metric(penalties, []), 0.80, 0.3, spread=spread, z=z)
    assert met and chosen == ["A", "B"]
    only_a = next(s for s in steps if s.action == "add" and s.float_layers == ["A"])
    assert only_a.drop_points == pytest.approx(0.2) and only_a.se_points == 0.4
    assert only_a.bound_points == pytest.approx(0.2 + z * 0.4) and not only_a.within_budget
    assert all(s.within_budget == (s.bound_points <= 0.3 + 1e-9) for s in steps)


def test_bisecting_walk_finds_the_shortest_passing_prefix_in_log_steps():
    """Ten layers that each cost 0.2 pt: a 0.5 pt budget needs the first eight float. The linear walk
    scores eight prefixes, bisection three (between the failing base and the passing full set)."""
    ranking = list("ABCDEFGHIJ")
    penalties = {c: 0.002 for c in ranking}
    linear, lsteps, _ = greedy_search(ranking, _metric(penalties, []), 0.80, 0.5, max_prune=0)
    calls: list[frozenset[str]] = []
    chosen, steps, met = greedy_search(
        ranking, _metric(penalties, calls), 0.80, 0.5, walk="bisect", max_prune=2
    )
    assert met and chosen == linear == ranking[:8]
    assert [s.action for s in steps] == ["base", "feasibility", "bisect", "bisect", "bisect"] + [
        "prune-kept"
    ] * 2
    assert [len(s.float_layers) for s in steps if s.action == "bisect"] == [5, 7, 8]
    assert (
        sum(s.action == "add" for s in lsteps) == 8 and len(calls) == len(set(calls)) == 6
    )  # prefix 7 = "without H"
    with pytest.raises(OcrQuantError, match="walk"):
        greedy_search(ranking, _metric(penalties, []), 0.80, 0.5, walk="random")


def test_greedy_search_rejects_a_negative_budget_and_duplicate_ranking():
    with pytest.raises(OcrQuantError, match="max_drop"):
        greedy_search(["A"], lambda s: 0.5, 0.5, -1.0)
    with pytest.raises(OcrQuantError, match="twice"):
        greedy_search(["A", "A"], lambda s: 0.5, 0.5, 1.0)


def test_a_validation_subset_where_int8_beats_fp32_past_the_budget_is_flagged():
    assert _subset_caution(-1.48, 0.3, 60).startswith("INT8 scores 1.48 pt above FP32 on the 60")
    assert _subset_caution(-0.2, 0.3, 2000) == "" and _subset_caution(0.5, 0.3, 2000) == ""


# ------------------------------------------------------------------ validation split
def test_calibration_leaves_images_to_validate_on():
    """det_train's 200 images with the default --calib-size 200: 140 calibrate and 60 validate (the
    budget search once took all 200 and then had nothing to validate on); rec_train's 4468 crops
    leave the full 200 for calibration; a tiny set splits in half."""
    assert calib_size_leaving_validation(200, 200, 60) == 140
    assert calib_size_leaving_validation(200, 4468, 2000) == 200
    assert calib_size_leaving_validation(200, 10, 60) == 5


@pytest.mark.parametrize("task", ["rec", "cls"])
def test_validation_never_shares_an_image_with_calibration(task):
    ds = open_dataset(sample_root() / "rec", task)
    split = split_calibration(ds, 10, 3, 20)
    # the calibration half is exactly the pipeline's pick
    assert [s.key for s in split.calibration] == [s.key for s in sample_calibration(ds, 10, 3)]
    calib_images = {Path(s.image_path).resolve() for s in split.calibration}
    val_images = {Path(s.image_path).resolve() for s in split.validation}
    assert len(split.validation) == 20 and not calib_images & val_images
    again = split_calibration(ds, 10, 3, 20)
    assert [s.key for s in again.validation] == [s.key for s in split.validation]  # seeded
    assert split.describe()["source"] == "calibration-holdout"


def test_explicit_validation_set_drops_calibration_images_and_full_use_is_an_error():
    ds = open_dataset(sample_root() / "rec", "rec")
    split = split_calibration(ds, 10, 0, 100, val_data=ds)
    assert len(split.validation) == len(ds.samples) - 10
    with pytest.raises(OcrQuantError, match="no samples left for validation"):
        split_calibration(ds, len(ds.samples), 0, 10)


# ------------------------------------------------------------------ real model: PP-OCRv3 cls


@pytest.fixture(scope="module")
def cls_setup(cls_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sens")
    ds = open_dataset(sample_root() / "rec", "cls")
    cfg = QuantConfig(method="min_max", calib_size=16, batch_size=4, cache_dir=tmp / "cache", progress=False)
    pair = quantize_pair(resolve_model(cls_model), "cls", ds, tmp, cfg)
    builder = VariantBuilder(onnx.load(str(pair.quantized.output)), onnx.load(str(pair.reference)))
    split = split_calibration(ds, cfg.calib_size, cfg.seed, 6)
    validator = Validator(
        get_task_class("cls")(),
        split.validation,
        pair.float_model,
        threads=1,
        snr_samples=6,
        optimization="disable",  # 54 sessions: skip graph optimization (the QDQ numerics stay the same)
        progress=False,
    )
    return pair, builder, validator, cfg, ds, tmp


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_sensitivity_ranks_every_quantized_layer_once(cls_setup):
    pair, builder, validator, _, _, tmp = cls_setup
    qmodel = onnx.load(str(pair.quantized.output))
    convs = [n.name for n in qmodel.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    result = analyze_layers(builder, validator, Path(pair.quantized.output), latency="none", work_dir=tmp)
    ranking = result.ranking()
    assert sorted(ranking) == sorted(builder.layers) and len(ranking) == len(set(ranking))
    assert set(builder.layers) <= set(convs) and len(builder.layers) >= 50  # 53 Conv + 1 MatMul in cls
    # HS-CLE's gate convs are quantized, but each belongs to its producer's block, not a layer of its own
    gates = [c for c in convs if c.endswith(GATE_SUFFIX)]
    assert gates and not set(gates) & set(builder.layers)
    assert all(g in builder.block(g[: -len(GATE_SUFFIX)]) for g in gates)
    assert all(r.snr_db is not None and r.metric is not None and r.depth >= 0 for r in result.rows)
    assert result.int8_snr_db is not None and result.fp32_metric == validator.fp32.metric
    # fidelity: agreement with the FP32 model's own predictions; the FP32 model agrees with itself
    assert validator.score(pair.float_model).fidelity == 1.0
    assert all(0.0 <= r.fidelity <= 1.0 for r in result.rows)
    by_fidelity = result.ranked("fidelity")
    assert [r.fidelity for r in by_fidelity] == sorted((r.fidelity for r in result.rows), reverse=True)
    with pytest.raises(OcrQuantError, match="unknown ranking"):
        result.ranked("loss")


@pytest.mark.parametrize("granularity,count", [("layer", 1), ("block", 3)])
def test_float_variant_equals_the_pipelines_exclude(cls_setup, granularity, count):
    """The graph edit is the model the pipeline writes with exclude = the variant's float nodes (at
    block granularity: consecutive layers with their HardSwish/SE nodes, so whole tensors go float)."""
    pair, _, validator, cfg, ds, tmp = cls_setup
    builder = VariantBuilder(
        onnx.load(str(pair.quantized.output)), onnx.load(str(pair.reference)), granularity
    )
    layers = builder.layers[2 : 2 + count]
    edited = builder.save(tmp / f"edited_{granularity}.onnx", float_layers=layers)
    nodes = builder.float_nodes(layers)
    assert (len(nodes) > len(layers)) == (granularity == "block")
    cfg_x = dataclasses.replace(cfg, exclude=nodes, graph_passes=False)  # the pair's plain Q/DQ layout
    excluded = quantize(
        resolve_model(pair.float_model), "cls", ds, tmp / f"excluded_{granularity}.onnx", cfg_x
    )
    assert all(excluded.float_nodes[n]["reason"].startswith("excluded") for n in layers)
    qdq = [
        sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(p)).graph.node)
        for p in (edited, excluded.output)
    ]
    assert qdq[0] == qdq[1]
    for x in [item[1].inputs for item in validator.items[:3]]:
        assert np.abs(_run(edited, x) - _run(Path(excluded.output), x)).max() < 1e-5
    x = validator.items[0][1].inputs
    assert np.abs(_run(edited, x) - _run(Path(pair.quantized.output), x)).max() > 0  # it did change


def test_only_quantized_variant_keeps_qdq_only_around_that_layer(cls_setup):
    _, builder, validator, _, _, tmp = cls_setup
    layer = builder.layers[5]
    m = builder.build(only_quantized=layer)
    inits = {i.name for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    weight_fed = {
        n.name
        for n in m.graph.node
        if any(
            prod.get(i) and prod[i].op_type == "DequantizeLinear" and prod[i].input[0] in inits
            for i in n.input
        )
    }
    assert weight_fed == {layer}  # every other layer reads float weights
    assert sum(n.op_type == "QuantizeLinear" for n in m.graph.node) <= 2  # its input and its output
    path = builder.save(tmp / "only.onnx", only_quantized=layer)
    int8_path = builder.save(tmp / "int8.onnx")
    xs = [item[1].inputs for item in validator.items]  # summed over crops: one can be saturated

    def error(model: Path) -> float:
        return sum(float(np.abs(_run(model, x) - _run(validator.float_model_path, x)).sum()) for x in xs)

    assert 0 < error(path) < error(int8_path)


def test_quantize_with_budget_writes_the_model_and_a_report(cls_model, cls_setup, tmp_path):
    pair, builder, _, cfg, _, _ = cls_setup
    out = tmp_path / "cls.mixed.onnx"
    result, report = quantize_with_budget(
        resolve_model(cls_model),
        "cls",
        sample_calib(),
        None,
        out,
        cfg,
        # any model meets a 100-point budget: the search stops at the INT8 base
        BudgetConfig(100.0, val_size=4, threads=1, latency=False, progress=False),
        pair=pair,  # reuse the fixture's two pipeline runs
    )
    assert out.is_file() and result.sidecar.is_file() and Path(report.report_path).is_file()
    assert report.met and report.chosen == [] and report.steps[0].action == "base"
    assert report.steps[-1].action == "final" and report.validation["source"] == "calibration-holdout"
    # every set is judged by its drop plus z x its paired bootstrap spread (default 90 % one-sided)
    final = report.steps[-1]
    assert report.settings["confidence"] == 0.9 and final.se_points is not None and final.se_points >= 0
    assert final.bound_points == pytest.approx(final.drop_points + report.settings["z"] * final.se_points)
    # the default ranking for cls: fidelity to the FP32 predictions, each layer float in turn
    assert sorted(report.ranking) == sorted(builder.layers) and report.settings["rank_by"] == "fidelity"
    assert report.settings["rank_size"] == 4 and report.int8_metric == report.steps[0].metric
    # the analysis behind the ranking is in the report, in ranking order, even with nothing floated
    saved = json.loads(Path(report.report_path).read_text())
    assert [row["name"] for row in saved["sensitivity"]] == report.ranking
    assert all(row["fidelity"] is not None and row["metric"] is not None for row in saved["sensitivity"])


def test_budget_search_rejects_a_confidence_outside_its_range(cls_model, tmp_path):
    for level in (0.3, 1.0):
        with pytest.raises(OcrQuantError, match="confidence must be in"):
            quantize_with_budget(
                resolve_model(cls_model),
                "cls",
                sample_calib(),
                None,
                tmp_path / "x.onnx",
                None,
                BudgetConfig(0.3, confidence=level),
            )
    assert not (tmp_path / "x.onnx").exists()


def test_int16_keep_mode_names_the_layers_activation_tensors(cls_setup):
    pair, builder, _, cfg, _, _ = cls_setup
    qmodel = onnx.load(str(pair.quantized.output))
    layer = builder.layers[3]
    int16 = config_for(cfg, "int16", [layer], qmodel)
    q_inputs = {n.input[0] for n in qmodel.graph.node if n.op_type == "QuantizeLinear"}
    node = next(n for n in qmodel.graph.node if n.name == layer)
    assert set(int16.dtype_overrides.values()) == {"int16"} and node.output[0] in int16.dtype_overrides
    assert set(int16.dtype_overrides) <= q_inputs | set(node.output)  # real float tensor names
    floated = config_for(cfg, "float", [layer], qmodel, builder.float_nodes([layer]))
    assert floated.exclude[: len(cfg.exclude)] == cfg.exclude and layer in floated.exclude


def test_budget_search_edits_a_model_without_bias_correction_and_validates_it_for_the_final_model(
    cls_model, cls_setup, tmp_path
):
    """Bias correction is fitted to every quantized layer upstream; an edit that floats one of them
    would keep stale corrections, so the search runs without it and the final model gets it back."""
    _, builder, _, cfg, _, _ = cls_setup
    cfg_bc = dataclasses.replace(
        cfg,
        extra_algorithms=["bias_correction"],
        algorithm_options={"bias_correction": {"max_batches": 1, "group_size": 64}},
    )
    out = tmp_path / "cls.bc.onnx"
    result, report = quantize_with_budget(
        resolve_model(cls_model), "cls", sample_calib(), None, out, cfg_bc,
        BudgetConfig(100.0, val_size=4, ranking=builder.layers[:2], threads=1, latency=False, progress=False),
    )  # fmt: skip
    assert "bias_correction" not in report.settings["search_algorithms"]
    # put back only if it raises the validation metric of the chosen set
    check = report.settings["qdq_stage_algorithms_metric"]
    kept = check["with"] >= check["without"]
    assert ("bias_correction" in report.settings["final_algorithms"]) == kept
    side = json.loads(result.sidecar.read_text())
    assert ("bias_correction" in side["settings"]["algorithms"]) == kept
    assert report.final_metric == max(check["with"], check["without"])


def test_float_reference_for_a_model_without_reshape_or_transpose(tmp_path):
    """PP-OCRv3 det has no Reshape/Transpose to keep the reference run's selection non-empty; a Concat
    or Resize serves, and the variants build."""
    det_model = zoo_model_path("ppocrv3-det")
    ds = open_dataset(sample_root() / "det", "det")
    cache = tmp_path / "cache"
    cfg = QuantConfig(method="min_max", calib_size=2, batch_size=1, cache_dir=cache, progress=False)
    pair = quantize_pair(resolve_model(det_model), "det", ds, tmp_path, cfg)
    ref = onnx.load(str(pair.reference))
    kept = {n.op_type for n in ref.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")}
    assert not {"Reshape", "Transpose"} & kept
    builder = VariantBuilder(onnx.load(str(pair.quantized.output)), ref)
    assert len(builder.layers) >= 30  # the det convs, each with its activation block
    variant = builder.build(float_layers=builder.layers[:1])
    assert sum(n.op_type == "QuantizeLinear" for n in variant.graph.node) > 0


def test_the_pair_keeps_the_plain_qdq_layout_and_the_shipped_model_is_folded(cls_setup):
    """The analysis edits the pair's Q/DQ nodes, so its models skip the target's graph rewrites (a Mul
    folded into a scale cannot be given back to a float block); the pipeline's own output has them."""
    pair, builder, validator, _, _, tmp = cls_setup
    side = json.loads(Path(pair.quantized.output).with_suffix(".quant.json").read_text())
    assert "graph_passes" not in side
    assert any(n.op_type == "Mul" and n.name.startswith("Div@") for n in builder.base.graph.node)
    # every block floated: the float model again
    everything = builder.save(tmp / "all_float.onnx", float_layers=list(builder.layers))
    x = validator.items[0][1].inputs
    assert np.abs(_run(everything, x) - _run(validator.float_model_path, x)).max() < 1e-4
