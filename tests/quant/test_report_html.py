"""report.html from a small synthetic quantization result: wording, labels, titles and axes."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

from mtc.quant.checks import CheckResult, ClipCheck
from mtc.quant.config import Gates
from mtc.quant.report import render_html

FRAMES = 24
# Relative output errors of single INT8 layers are this small on real models (RVM: 1e-5..1e-3).
ISOLATED = {"conv_stem": 2.4e-4, "conv_block1": 7.1e-5, "conv_block2": 3.3e-5, "conv_head": 9.0e-6}


def _check() -> CheckResult:
    rng = np.random.default_rng(0)
    mad = [float(v) for v in rng.uniform(0.2, 0.9, FRAMES)]
    dtssd = [float(v) for v in rng.uniform(0.1, 0.5, FRAMES)]
    clip = ClipCheck(name="builtin-512x288", resolution="512x288", downsample_ratio=1.0, mad=float(np.mean(mad)),
                     mse=0.01, grad=0.2, dtssd=float(np.mean(dtssd)), mad_per_frame=mad, dtssd_per_frame=dtssd,
                     nonfinite_frames=[], worst_frame=int(np.argmax(mad)),
                     worst_diff=np.zeros((18, 32), np.float32))
    return CheckResult([clip], Gates(max_mad=2.0, max_dtssd=2.0))


def _report(*, fps: float, fps_all_int8: float) -> dict:
    layers = {name: {"mad": 0.5 - 0.1 * i, "dtssd": 0.3 - 0.05 * i} for i, name in enumerate(ISOLATED)}
    return {
        "model": "rvm", "variant": "mobilenetv3", "precision": "int8", "passed": True,
        "speed": {"backend": "onnxruntime-cpu", "clip": "builtin-512x288", "fps_fp32": 8.0, "fps": fps,
                  "speedup": fps / 8.0, "auto_backend": "onnxruntime", "fps_all_int8": fps_all_int8,
                  "float_layers_cost": 1.0 - fps / fps_all_int8},
        "int8": {"int8_layers": 3, "quantized_layers": 4, "method": "mse", "fallback_layers": ["conv_stem"],
                 "isolated_layer_error": ISOLATED,
                 "float_budget": {"budget_mac_share": 0.04, "layers": ["conv_stem"], "fitting_layers": 4,
                                  "probed_layers": 4, "mac_share": 0.012}},
        "removal_sensitivity": {"all_int8": {"mad": 1.2, "dtssd": 0.9}, "layers": layers},
    }


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", page, flags=re.S)


def _texts(svg: str) -> list[tuple[dict[str, str], str]]:
    """(attributes, content) of each <text> element."""
    found = []
    for attributes, content in re.findall(r"<text([^>]*)>(.*?)</text>", svg, flags=re.S):
        found.append((dict(re.findall(r'([\w-]+)="([^"]*)"', attributes)), html.unescape(content)))
    return found


def _figure_with(page: str, caption: str) -> str:
    """The SVG of the chart whose title (a caption before it, or a text inside it) holds `caption`."""
    for title, svg in re.findall(r"(?:<figcaption[^>]*>(.*?)</figcaption>)?\s*(<svg.*?</svg>)", page, flags=re.S):
        if caption in html.unescape(title or svg):
            return svg
    raise AssertionError(f"no chart titled {caption!r}")


def test_a_faster_mixed_model_is_a_gain_not_a_negative_cost():
    page = render_html(_report(fps=10.38, fps_all_int8=10.0), _check())
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    sentence = text[text.index("All-INT8 ran"):].split(".")[1]
    assert "-3.8%" not in text and "−3.8%" not in text
    assert "gained 3.8%" in text and "cost" not in sentence, sentence


def test_a_slower_mixed_model_states_its_cost():
    text = html.unescape(render_html(_report(fps=9.0, fps_all_int8=10.0), _check()))
    assert "cost 10.0% of that speed" in text


def test_the_float_layers_cost_is_stated_for_openvino_too_where_auto_runs_it():
    report = _report(fps=9.0, fps_all_int8=10.0)  # ONNX Runtime: float layers cost little
    report["speed"]["openvino"] = {"fps_fp32": 14.0, "fps": 19.0, "speedup": 19.0 / 14.0, "vs_onnxruntime_fp32": 19.0 / 8.0,
                                   "fps_all_int8": 33.0, "float_layers_cost": 1.0 - 19.0 / 33.0}
    text = html.unescape(re.sub(r"<[^>]+>", "", render_html(report, _check())))
    openvino = text[text.index("OpenVINO, which"):]
    assert "cost 10.0% of that speed" in text[:text.index("OpenVINO, which")]
    assert "All-INT8 ran 33.0 FPS: keeping layers in float cost 42.4% of that speed." in openvino


def test_an_artifact_no_faster_than_fp32_where_it_runs_is_flagged():
    report = _report(fps=9.0, fps_all_int8=10.0)
    assert "buys little or no speed" not in render_html(report, _check())  # ×1.12 its FP32 on ONNX Runtime
    report["speed"]["openvino"] = {"fps_fp32": 14.0, "fps": 14.2, "speedup": 14.2 / 14.0, "vs_onnxruntime_fp32": 14.2 / 8.0}
    text = html.unescape(re.sub(r"<[^>]+>", "", render_html(report, _check())))
    assert "INT8 runs 1.01x the FP32 model on OpenVINO here: it buys little or no speed" in text


def test_isolated_error_bars_have_significant_digits():
    chart = _figure_with(render_html(_report(fps=9.0, fps_all_int8=10.0), _check()), "isolated INT8 error")
    labels = [content for attributes, content in _texts(chart) if re.fullmatch(r"-?[\d.e+-]+", content)]
    assert len(labels) == len(ISOLATED), labels
    assert "0.000" not in labels and len(set(labels)) == len(labels), labels
    # each label reads back as its value to two significant figures
    assert sorted(float(v) for v in labels) == pytest.approx(sorted(ISOLATED.values()), rel=0.01)


def test_no_chart_text_runs_past_its_svg():
    page = render_html(_report(fps=9.0, fps_all_int8=10.0), _check())
    for svg in _svgs(page):
        width = float(re.search(r'<svg[^>]*width="(\d+)"', svg)[1])
        size = float(re.search(r'<svg[^>]*font-size="(\d+)"', svg)[1])
        for attributes, content in _texts(svg):
            # 0.6 em per character is a generous average for sans-serif (bold included)
            extent = len(content) * 0.6 * size
            start = float(attributes["x"]) - (extent / 2 if attributes.get("text-anchor") == "middle" else 0)
            assert start + extent <= width, (content, start + extent, width)
    # the long float-budget title is still there in full
    text = html.unescape(page)
    assert ("float budget: MAD + dtSSD removed by returning that layer alone to float (all-INT8 2.100; red: kept in "
            "float, 1.2% of the MACs; probed 4 of the 4 layers that fit the budget)") in text


@pytest.mark.parametrize("caption", ["per-frame MAD vs FP32", "per-frame dtSSD vs FP32"])
def test_per_frame_axes_are_numbered(caption):
    chart = _figure_with(render_html(_report(fps=9.0, fps_all_int8=10.0), _check()), caption)
    svg_height = float(re.search(r'<svg[^>]*height="(\d+)"', chart)[1])
    axis_y = max(float(y) for y in re.findall(r'<line [^>]*y1="([\d.]+)"', chart))
    numbers = [int(content) for attributes, content in _texts(chart)
               if content.isdigit() and axis_y < float(attributes["y"]) < svg_height]
    # frames count from 0 like "Worst frame N"; several ticks, in order, all within the clip
    assert len(numbers) >= 4 and numbers[0] == 0 and numbers == sorted(numbers) and numbers[-1] < FRAMES, numbers


def test_the_learning_section_names_the_blocks_that_kept_nearest_rounding():
    block = {"iterations": 3, "curve": [2.0, 1.5, 1.0]}
    learning = {"method": "ptq4vm", "samples": 8, "iterations": 3, "batch": 1, "drop": 0.5,
                "gac": {"iterations": 0, "kept": False},
                "blocks": [{**block, "layers": ["conv_stem"], "nearest_error": 3.0, "learned_error": 1.0,
                            "kept": "learned"},
                           {**block, "layers": ["conv_head"], "nearest_error": 1.0, "learned_error": 4.0,
                            "kept": "nearest"}]}
    report = _report(fps=9.0, fps_all_int8=10.0)
    report["int8"]["learning"] = learning
    text = html.unescape(render_html(report, _check()))
    assert ("2 blocks. 1 of them ended with a larger error than nearest rounding gives and kept nearest rounding "
            "and their calibrated step sizes.") in text
    # each chart is labelled with its block's error over all samples, not its curve's ends
    assert "2 (nearest) conv_head: 1 → 4" in text and "1. conv_stem: 3 → 1" in text
    assert "median factor of 2.17 against nearest rounding (from 0.333 to 4)" in text
