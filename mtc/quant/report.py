"""The human-readable quantization report: one self-contained HTML page (inline SVG and PNG)."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from mtc.quant.checks import CheckResult

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def line_chart(series: dict[str, list[float]], *, title: str, y_label: str, limit: float | None = None,
               width: int = 640, height: int = 220) -> str:
    """An SVG line chart of per-frame values, with the gate as a dashed line and numbered frames."""
    pad_l, pad_b, pad_t = 48, 34, 12
    values = [v for s in series.values() for v in s if np.isfinite(v)]
    top = max(values + ([limit] if limit is not None else []) + [1e-9]) * 1.1
    frames = max((len(s) for s in series.values()), default=1)
    sx = (width - pad_l - 10) / max(frames - 1, 1)
    sy = (height - pad_b - pad_t) / top
    axis = height - pad_b

    def point(i, v):
        return f"{pad_l + i * sx:.1f},{axis - min(v, top) * sy:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
             f'<line x1="{pad_l}" y1="{axis}" x2="{width - 10}" y2="{axis}" stroke="#444"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{axis}" stroke="#444"/>',
             f'<text x="4" y="{pad_t + 8}">{top:.2g}</text><text x="4" y="{axis}">0</text>',
             f'<text x="{width // 2}" y="{height - 4}" text-anchor="middle">frame</text>',
             f'<text x="{pad_l + 4}" y="{pad_t + 8}" fill="#666">{html.escape(y_label)}</text>']
    # Frame numbers count from 0, as the "Worst frame N" line under each chart does.
    for i in _frame_ticks(frames):
        x = pad_l + i * sx
        parts.append(f'<line x1="{x:.1f}" y1="{axis}" x2="{x:.1f}" y2="{axis + 4}" stroke="#444"/>'
                     f'<text x="{x:.1f}" y="{axis + 15}" text-anchor="middle">{i}</text>')
    if limit is not None:
        y = axis - limit * sy
        parts.append(f'<line x1="{pad_l}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#d62728" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{width - 80}" y="{y - 3:.1f}" fill="#d62728">gate {limit:g}</text>')
    for k, (name, values) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        points = " ".join(point(i, v if np.isfinite(v) else top) for i, v in enumerate(values))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{width - 200}" y="{pad_t + 12 * (k + 1)}" fill="{color}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return _figure(title, "".join(parts))


def _frame_ticks(frames: int, most: int = 10) -> range:
    """Frame indices to number on an x axis of `frames` frames: every 1, 2, 5, 10, 20, 50, ...
    frames, the smallest step giving at most `most` numbers."""
    step = 1
    while (frames - 1) // step + 1 > most:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    return range(0, frames, step)


def _number(value: float) -> str:
    """A chart label with three significant figures, in scientific notation below 1e-3: with a
    fixed three decimals, isolated-error bars of about 1e-4 were all labelled 0.000."""
    if not np.isfinite(value) or value == 0:
        return f"{value:g}"
    if abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3g}" if abs(value) < 1e3 else f"{value:.0f}"


def _share(value: float | None) -> str:
    """A share as a percentage, or a dash where it was not measured."""
    return "–" if value is None else f"{value:.2%}"


def _figure(title: str, svg: str) -> str:
    """A chart under its title as an HTML caption, which wraps at the page's width: drawn in
    the SVG, long titles ran past its fixed width and were cut off."""
    return (f"<figure style='margin:1em 0'><figcaption style='font-weight:bold;font-size:13px'>"
            f"{html.escape(title)}</figcaption>{svg}</figure>")


def bar_chart(values: dict[str, float], *, title: str, highlight: set[str] = frozenset(), width: int = 640,
              bar: int = 14) -> str:
    """Horizontal bars, largest first; highlighted bars (layers kept in float) in red."""
    items = sorted(values.items(), key=lambda kv: -kv[1])
    top = max([v for _, v in items] + [1e-9])
    height = 8 + bar * len(items)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="10">']
    for i, (name, value) in enumerate(items):
        y = 2 + i * bar
        length = max(0.0, (width - 230) * value / top)  # a negative value (e.g. a gain that is a loss) has no bar
        color = "#d62728" if name in highlight else "#1f77b4"
        parts.append(f'<text x="4" y="{y + 10}">{html.escape(name[:24])}</text>')
        parts.append(f'<rect x="160" y="{y}" width="{length:.1f}" height="{bar - 3}" fill="{color}"/>')
        parts.append(f'<text x="{165 + length:.1f}" y="{y + 10}">{_number(value)}</text>')
    parts.append("</svg>")
    return _figure(title, "".join(parts))


def loss_curves(curves: list[tuple[str, list[float], float | None, float | None]], *, title: str,
                width: int = 150, height: int = 64) -> str:
    """Small line charts side by side, one per learned block: each on its own vertical scale
    from 0 (losses of different blocks differ by orders of magnitude), labelled with the block
    and its error before and after learning (a curve's own ends are one batch's losses, which
    can differ between samples more than learning moves them)."""
    charts = []
    for label, values, before, after in curves:
        finite = [v for v in values if np.isfinite(v)]
        top = max(finite + [1e-12]) * 1.05
        axis, sx = height - 14, (width - 8) / max(len(values) - 1, 1)
        points = " ".join(f"{4 + i * sx:.1f},{axis - (v if np.isfinite(v) else top) / top * (axis - 4):.1f}"
                          for i, v in enumerate(values))
        first, last = (_number(value) if value is not None else "–" for value in (before, after))
        charts.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="9">'
                      f'<line x1="4" y1="{axis}" x2="{width - 4}" y2="{axis}" stroke="#444"/>'
                      f'<polyline fill="none" stroke="{COLORS[0]}" stroke-width="1.2" points="{points}"/>'
                      f'<text x="4" y="{height - 3}">{html.escape(label[:22])}: {first} → {last}</text></svg>')
    return _figure(title, "<div style='display:flex;flex-wrap:wrap;gap:6px'>" + "".join(charts) + "</div>")


def _bullets(intro: str, items: list[str]) -> str:
    """A paragraph and a bullet list of already escaped HTML items."""
    return f"<p>{intro}</p><ul>{''.join(f'<li>{item}</li>' for item in items)}</ul>"


def _coverage(coverage: dict) -> str:
    """The range coverage: the INT8 inputs the check frames drive past their calibrated range."""
    worst = coverage["outgrown"]
    head = f"Range coverage on the {coverage['frames']} check frames: "
    if not worst:
        return f"<p>{head}no INT8 input outgrows its calibrated range.</p>"
    shown = worst[:20]
    more = f" (the {len(shown)} worst shown)" if len(worst) > len(shown) else ""
    kept = coverage.get("kept_float") or []
    remedy = (f"{len(kept)} layers reading them stay in float ({html.escape(', '.join(kept))}; "
              "<code>--keep-outgrown-int8</code> keeps them INT8). " if kept else "")
    return _bullets(
        f"{head}{len(worst)} of {coverage['tensors']} INT8 inputs lose more than twice as much to clipping as to "
        f"rounding, and as they lost to clipping on the calibration data{more}. {remedy}The calibration data do not "
        "cover this footage: calibrate on footage like it too (<code>--calib builtin --calib CLIP</code>).",
        [f"{html.escape(c['read_by'] or c['tensor'])}'s input: clipping error {c['clip_to_round']:.3g}× the rounding "
         f"error ({c['calibration_clip_to_round']:.3g}× on the calibration data), {c['clipped_share']:.2%} of its "
         "values clipped" for c in shown])


def _learning(learning: dict, choice: dict | None) -> list[str]:
    """The PTQ4VM section: what ran, which affine correction won, and each block's
    reconstruction loss over its iterations."""
    gac = learning["gac"]
    if not gac["iterations"]:
        stage2 = "Stage 2 (global affine calibration) was off."
    else:
        temporal = gac.get("temporal") or {}
        stage2 = (f"Stage 2 (global affine calibration), {gac['iterations']} steps"
                  + (f", with the flow-assisted temporal loss on {temporal['pairs']} pairs of consecutive frames"
                     if temporal.get("weight") else "")
                  + f": its loss over the calibration samples {_number(gac['error_before'])} → "
                  f"{_number(gac['error_after'])}" + ("." if gac["kept"] else ", not kept."))
    if choice:
        names = {"gac": "trained (GAC)", "closed_form": "closed-form", "none": "none"}
        rivals = "; ".join(f"{names[name]}: worst MAD {c['mad']:.3f}, dtSSD {c['dtssd']:.3f}"
                           for name, c in choice.items() if name != "chosen")
        stage2 += f" Affine correction on the check clips: {rivals}; kept: {names[choice['chosen']]}."
    # Labels are cut short under the charts: the mark goes before the layer names.
    learned = [(f"{i + 1}{' (nearest)' if b.get('kept') == 'nearest' else '.'} {', '.join(b['layers'])}", b["curve"],
                b.get("nearest_error"), b.get("learned_error"))
               for i, b in enumerate(learning["blocks"]) if b["curve"]]
    kept_nearest = sum(b.get("kept") == "nearest" for b in learning["blocks"])
    guard = (f" {kept_nearest} of them ended with a larger error than nearest rounding gives and kept nearest "
             "rounding and their calibrated step sizes." if kept_nearest else "")
    ratios = [b["learned_error"] / b["nearest_error"] for b in learning["blocks"]
              if b.get("nearest_error") and b.get("learned_error") is not None]
    effect = ""
    if ratios:
        effect = (f" Over all samples, learning changed a block's error by a median factor of "
                  f"{float(np.median(ratios)):.3g} against nearest rounding (from {min(ratios):.3g} to "
                  f"{max(ratios):.3g}).")
    sections = [f"<h2>Learned quantization: PTQ4VM</h2><p>Stage 1 (block reconstruction: AdaRound weight rounding, "
                f"LSQ step sizes, QDrop {learning['drop']:g}) on {learning['samples']} calibration samples, "
                f"{learning['iterations']} iterations per block, batch {learning['batch']}, "
                f"{len(learning['blocks'])} blocks.{guard}{effect} {stage2}</p>"]
    if learned:
        sections.append(loss_curves(learned, title="block reconstruction loss per iteration (squared error of the "
                                                   "block's outputs vs FP32 on one batch, averaged over windows of "
                                                   "iterations; each block on its own scale; labelled with the "
                                                   "error over all samples with nearest rounding → learned; "
                                                   "(nearest): kept nearest rounding)"))
    return sections


def diff_image(diff: np.ndarray) -> str:
    """|alpha difference| as an inline PNG (white = 1.0 difference), scaled so faint errors show."""
    from PIL import Image

    scaled = np.clip(diff * 4.0, 0.0, 1.0)
    image = Image.fromarray((scaled * 255).astype(np.uint8))
    image.thumbnail((480, 480))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f'<img alt="alpha difference" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"/>'


# Below this ratio to its FP32 model on the same backend, the quantization's own timing cannot
# tell the artifact's speed from FP32's.
MIN_SPEEDUP = 1.1


def _float_layers_cost(speed: dict, kept: int | None = None) -> str:
    """The sentence on what keeping layers (`kept` of them, where given) in float did to speed,
    vs the all-INT8 model.

    `float_layers_cost` is the share of all-INT8 FPS given up (1 - fps / fps_all_int8). It is
    negative when the mixed model ran faster (some layers are quicker in float than with their
    Q/DQ pairs, or the difference is timing noise): printed as a cost, that read "cost -3.8%".
    """
    cost = speed["float_layers_cost"]
    effect = (f"cost {cost:.1%} of that speed" if cost >= 0
              else f"gained {-cost:.1%} (the mixed model ran faster: in float those layers beat their INT8 "
                   "Q/DQ form, or the gap is timing noise)")
    layers = "layers" if kept is None else f"{kept} layer{'s' if kept != 1 else ''}"
    return f" All-INT8 ran {speed['fps_all_int8']:.1f} FPS: keeping {layers} in float {effect}."


def _where_auto_runs(speed: dict) -> tuple[str, dict]:
    """The backend `backend="auto"` picks for the artifact here, and its part of `speed`."""
    return ("OpenVINO", speed["openvino"]) if "openvino" in speed else ("ONNX Runtime", speed)


def speed_line(report: dict) -> str:
    """One line on what the quantization's own speed timing measured: on the backend
    `backend="auto"` picks here, against plain ONNX Runtime FP32 (and the FP32 model on that
    backend), and what the layers kept in float cost against the all-INT8 model (where any were)."""
    speed = report["speed"]
    backend, where = _where_auto_runs(speed)
    ratio = where.get("vs_onnxruntime_fp32", where["speedup"])
    own = f" ({where['speedup']:.2f}x its FP32 there)" if where is not speed else ""
    line = (f"speed: {ratio:.2f}x ONNX Runtime FP32 on {backend}{own}, the backend "
            f"auto picks here ({speed['clip']}; indicative, benchmarks/ has the controlled comparison).")
    if "fps_all_int8" in where:
        int8 = report["int8"]
        line += _float_layers_cost(where, kept=int8["quantized_layers"] - int8["int8_layers"])
    return line


def speed_warning(report: dict) -> str | None:
    """A warning where an INT8 or BF16 artifact, both made for CPU speed, runs less than
    MIN_SPEEDUP times its FP32 model on the backend `backend="auto"` picks here: a quantization
    that buys no speed (most often the fallback returned most of the MACs to float) should not
    pass unnoticed. None otherwise, and for FP16, whose speed is a GPU's."""
    precision = report["precision"]
    backend, where = _where_auto_runs(report["speed"])
    if precision not in ("int8", "bf16") or where["speedup"] >= MIN_SPEEDUP:
        return None
    share = (report.get("int8") or {}).get("fallback_mac_share")
    kept = f", with {share:.0%} of its MACs returned to float by the fallback" if share else ""
    instead = ", or quantize only the layers that pay with --preset speed" if precision == "int8" else ""
    return (f"{precision.upper()} runs {where['speedup']:.2f}x the FP32 model on {backend} here{kept}: "
            f"it buys little or no speed (keep the FP32 artifact{instead})")


def _fallback_steps(steps: list[dict]) -> str:
    """The fallback search's attempts as a table; INT8's name the ranking and the MAC share
    they tried (FP16's search has neither)."""
    ranked = any("order" in s for s in steps)
    rows = "".join("<tr>" + (f"<td>{html.escape(s['order'] or '–')}</td>" if ranked else "")
                   + f"<td>{s['float_layers']}</td>" + (f"<td>{_share(s.get('mac_share'))}</td>" if ranked else "")
                   + f"<td>{s['mad']:.3f}</td><td>{s['dtssd']:.3f}</td><td>{'pass' if s['passed'] else 'fail'}</td></tr>"
                   for s in steps)
    intro = ("<p>Layers return to float ranked by their isolated INT8 error per MAC (the least speed first), "
             "and only where that cannot pass the gates, by their error alone.</p>"
             if any("mac_share" in s for s in steps) else "")
    head = ("<th>ranked by</th><th>layers in float</th><th>their share of the MACs</th>" if ranked
            else "<th>layers in float</th>")
    return (f"<h2>Fallback search</h2>{intro}<table border=1 cellpadding=4><tr>{head}<th>worst MAD</th>"
            f"<th>worst dtSSD</th><th>gates</th></tr>{rows}</table>")


def _calibration(calibration: dict) -> str:
    """What the quantization was calibrated on ("" where no frames were: BF16)."""
    if not (calibration.get("sources") and calibration.get("frames")):
        return ""
    return (f"<p>Calibrated on {', '.join(html.escape(s) for s in calibration['sources'])}: "
            f"{calibration['frames']} frames in {len(calibration['clips'])} clips.</p>")


def render_html(report: dict, check: CheckResult) -> str:
    status = "PASSED" if check.passed else "FAILED"
    color = "#2ca02c" if check.passed else "#d62728"
    rows = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{c.resolution}</td><td>{c.downsample_ratio}</td>"
        f"<td>{c.mad:.3f}</td><td>{c.mse:.4f}</td><td>{c.grad:.3f}</td><td>{c.dtssd:.3f}</td>"
        f"<td>{len(c.nonfinite_frames)}</td></tr>" for c in check.clips)
    sections = [
        f"<h1>{html.escape(report['model'])} / {html.escape(report['variant'])}: {report['precision'].upper()} "
        + ("(PTQ4VM) " if (report.get("int8") or {}).get("learning") else "")
        + f"<span style='color:{color}'>{status}</span></h1>",
        f"<p>Gates vs FP32: MAD ≤ {check.gates.max_mad}, dtSSD ≤ {check.gates.max_dtssd} on every check clip"
        + (f", checked on a CPU of class {html.escape(report['checked_cpu'])} (integer kernels differ between "
           "classes)." if report.get("checked_cpu") else ".")
        + ("".join(f"<br><b>{html.escape(f)}</b>" for f in check.failures)) + "</p>",
        _calibration(report.get("calibration") or {}),
        "<table border=1 cellpadding=4><tr><th>clip</th><th>size</th><th>ratio</th><th>MAD ×1e3</th><th>MSE ×1e3</th>"
        f"<th>Grad</th><th>dtSSD ×1e2</th><th>NaN/Inf frames</th></tr>{rows}</table>",
    ]
    speed = report.get("speed")
    if speed:
        cost = _float_layers_cost(speed) if "fps_all_int8" in speed else ""
        openvino = speed.get("openvino")
        auto = ""
        if openvino:
            auto = (f" OpenVINO, which <code>backend=\"auto\"</code> picks for this artifact here: {openvino['fps']:.1f} "
                    f"FPS vs its FP32 {openvino['fps_fp32']:.1f} FPS (×{openvino['speedup']:.2f}; "
                    f"×{openvino['vs_onnxruntime_fp32']:.2f} ONNX Runtime FP32).")
            if "fps_all_int8" in openvino:  # the float layers' cost where the artifact will run
                auto += _float_layers_cost(openvino)
        warning = speed_warning(report)
        warning = f"<br><b>{html.escape(warning[0].upper() + warning[1:])}.</b>" if warning else ""
        sections.append(f"<p>ONNX Runtime CPU, {html.escape(speed['clip'])}: {speed['fps']:.1f} FPS vs FP32 "
                        f"{speed['fps_fp32']:.1f} FPS (×{speed['speedup']:.2f}; indicative, see benchmarks/).{cost}"
                        f"{auto}{warning}</p>")
    for c in check.clips:
        limit_mad, limit_dt = check.gates.max_mad, check.gates.max_dtssd
        sections.append(f"<h2>{html.escape(c.name)} ({c.resolution}, ratio {c.downsample_ratio})</h2>")
        sections.append(line_chart({"MAD ×1e3": c.mad_per_frame}, title="per-frame MAD vs FP32", y_label="MAD", limit=limit_mad))
        sections.append(line_chart({"dtSSD ×1e2": c.dtssd_per_frame}, title="per-frame dtSSD vs FP32", y_label="dtSSD",
                                   limit=limit_dt))
        sections.append(f"<p>Worst frame {c.worst_frame}: |alpha − FP32 alpha| ×4</p>{diff_image(c.worst_diff)}")
    int8 = report.get("int8")
    if int8:
        learned = ", then learned by PTQ4VM" if int8.get("learning") else ""
        sections.append(f"<h2>INT8 layers</h2><p>{int8['int8_layers']} of {int8['quantized_layers']} layers in INT8 "
                        f"(ranges: {html.escape(int8['method'])}{learned}); kept in float: "
                        f"{html.escape(', '.join(int8['fallback_layers']) or 'none')}.</p>")
    if int8 and int8.get("split_outlier_channels"):
        sections.append(_bullets("Outlier-channel split (a gap in the input channels' ranges):", [
            f"{html.escape(c['conv'])}: input channel{'s' if len(c['channels']) > 1 else ''} "
            f"{html.escape(', '.join(map(str, c['channels'])))} read by a float conv; the INT8 input range of the rest "
            f"{c['range_before']:.3g} → {c['range_after']:.3g}" for c in int8["split_outlier_channels"]]))
    if int8 and int8.get("exact_image_inputs"):
        grid = {True: "on the 8-bit grid itself (centred: levels -128..127 of step 1/255)",
                False: "calibrated (not a [0, 1] image on the calibration data)"}
        sections.append(_bullets("Input normalization folded into the first convs' weights:", [
            f"{html.escape(f['conv'])} reads {html.escape(f['image'])}"
            f"{' (its padding made explicit)' if f['padded'] else ''}: {grid[f['exact_grid']]}"
            for f in int8["exact_image_inputs"]]))
    if int8 and int8.get("range_coverage"):
        sections.append(_coverage(int8["range_coverage"]))
    if int8 and int8.get("learning"):
        sections += _learning(int8["learning"], int8.get("affine_choice"))
    if int8 and int8.get("equalized_concat_inputs"):
        scales = {f"{g['conv']} ← {g['input']}": g["scale"] for g in int8["equalized_concat_inputs"]}
        sections.append(bar_chart(scales, title="concat-input equalization: scale applied to each input group "
                                                "(its weights take the inverse)"))
    if int8 and int8.get("equalized_depthwise_inputs"):
        scales = {c["conv"]: c["largest_scale"] for c in int8["equalized_depthwise_inputs"]}
        sections.append(bar_chart(scales, title="depthwise-input equalization: the largest scale applied to an input "
                                                "channel of each conv (its filters take the inverse)"))
    if int8 and int8.get("gptq_error_ratio"):
        gains = int8["gptq_error_ratio"]
        sections.append(bar_chart(dict(sorted(gains.items(), key=lambda kv: -kv[1])[:40]),
                                  title="GPTQ weight rounding: layer-output error of round-to-nearest / GPTQ (×)"))
    if int8 and int8.get("isolated_layer_error"):
        errors = int8["isolated_layer_error"]
        sections.append(bar_chart(dict(sorted(errors.items(), key=lambda kv: -kv[1])[:40]),
                                  title="isolated INT8 error: each conv's output error with only it in INT8, "
                                        "relative to its FP32 output's variance"))
    if report.get("removal_sensitivity"):
        removal = report["removal_sensitivity"]
        base = removal["all_int8"]["mad"] + removal["all_int8"]["dtssd"]
        gains = {k: base - (v["mad"] + v["dtssd"]) for k, v in removal["layers"].items()}
        budget = int8["float_budget"]
        sections.append(bar_chart(dict(sorted(gains.items(), key=lambda kv: -kv[1])[:40]),
                                  title="float budget: MAD + dtSSD removed by returning that layer alone to float "
                                        f"(all-INT8 {base:.3f}; red: kept in float, {budget['mac_share']:.1%} of the "
                                        f"MACs; probed {budget['probed_layers']} of the {budget['fitting_layers']} "
                                        "layers that fit the budget)",
                                  highlight=set(budget["layers"])))
    if report.get("sensitivity"):
        fallback = set(int8["fallback_layers"]) if int8 else set()
        scores = {k: v["mad"] + v["dtssd"] for k, v in report["sensitivity"].items()}
        sections.append(bar_chart(dict(sorted(scores.items(), key=lambda kv: -kv[1])[:40]),
                                  title="per-layer sensitivity: MAD + dtSSD with only that layer in INT8 (red: kept in float)",
                                  highlight=fallback))
    if report.get("fallback_steps"):
        sections.append(_fallback_steps(report["fallback_steps"]))
    if report.get("fp16"):
        fp16 = report["fp16"]
        sensitive = fp16["sensitive_fp32"]
        sections.append(f"<h2>FP16</h2><p>Peak activation {fp16['peak_activation']:.4g}; kept in FP32 for measured "
                        f"overflow risk: {html.escape(', '.join(fp16['overflow_prone']) or 'none')}"
                        f"; kept in FP32 as the fewest most FP16-sensitive ops that pass the gates: "
                        f"{html.escape(', '.join(sensitive) or 'none')}.</p>")
    body = "\n".join(sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mtc report</title>"
            f"<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{font-size:13px}}</style>"
            f"</head><body>{body}</body></html>\n")
