"""The short human summary of a bench report (rich tables)."""

from __future__ import annotations


def _num(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _pair(acc: dict | None) -> str:
    if not acc:
        return "-"
    parts = [f"MAD {acc['mad']:.3g}" if "mad" in acc else None, f"dtSSD {acc['dtssd']:.3g}" if "dtssd" in acc else None]
    return ", ".join(p for p in parts if p) or "-"


METRIC_LABELS = {"mad": "MAD", "mse": "MSE", "grad": "Grad", "conn": "Conn", "dtssd": "dtSSD", "mae": "MAE",
                 "max_f": "maxF", "mean_f": "meanF", "weighted_f": "wF", "s_measure": "S", "max_e": "maxE",
                 "mean_e": "meanE"}


def _accuracy_table(report: dict):
    """Every measured metric, one row per resolution and comparison; None when nothing was compared."""
    from rich.table import Table

    rows = [(r["resolution"], against, acc) for r in report["results"]
            for against, acc in (("vs reference", r["accuracy"]["reference"]), ("vs GT", r["accuracy"]["gt"])) if acc]
    if not rows:
        return None
    names = [m for m in report["settings"]["metrics"] if any(m in acc for _, _, acc in rows)]
    table = Table(title="accuracy (MAD, MSE x1e3; Grad, Conn /1e3; dtSSD x1e2; SOD metrics in [0, 1])")
    for column in ("resolution", "against", "frames", *(METRIC_LABELS.get(m, m) for m in names)):
        table.add_column(column, justify="left" if column in ("resolution", "against") else "right")
    for resolution, against, acc in rows:
        table.add_row(resolution, against, str(acc["frames"]), *(_num(acc.get(m), ".4g") for m in names))
    return table


def print_report(report: dict, console) -> None:
    """Print the results table, the accuracy table (every metric measured) and, when gates were
    checked, the gate table."""
    from rich.table import Table

    from mtc.safe_text import plain

    art = report["artifact"]
    # The path and names come from the artifact's manifest: shown literally, never as markup or escapes.
    title = plain(f"{art['path']} — {art['model']}/{art['variant']} {art['precision']} on {art['backend']['name']}, "
                  f"{report['machine']['cpu']} ({report['machine']['cores']} cores)")
    table = Table(title=title)
    for column in ("resolution", "ratio", "FPS", "p50 ms", "p99 ms", "e2e FPS", "GFLOPs", "GFLOP/s", "peak RSS MiB",
                   "vs reference", "vs GT"):
        table.add_column(column, justify="left" if column.startswith(("res", "vs")) else "right")
    for r in report["results"]:
        lat, e2e, cost = r["model"]["latency_ms"], r["end_to_end"], r["cost"]
        rss = r["memory"]["host_peak_rss_bytes"]
        table.add_row(r["resolution"], _num(r["downsample_ratio"], ".3g"), _num(r["model"]["fps"]),
                      _num(lat["p50"]), _num(lat["p99"]), _num(e2e["fps"] if e2e else None),
                      _num(cost["gflops_per_frame"], ".2f"), _num(cost["achieved_gflops_per_s"]),
                      _num(rss / 2**20 if rss else None, ".0f"),
                      _pair(r["accuracy"]["reference"]), _pair(r["accuracy"]["gt"]))
    console.print(table)
    accuracy = _accuracy_table(report)
    if accuracy is not None:
        console.print(accuracy)
    gates = report.get("gates")
    if gates:
        gate_table = Table(title=f"gates from {gates['file']}: {'PASSED' if gates['passed'] else 'FAILED'}")
        for column in ("resolution", "gate", "threshold", "value", "result"):
            gate_table.add_column(column, justify="right" if column in ("threshold", "value") else "left")
        for g in gates["results"]:
            gate_table.add_row(g["resolution"], g["gate"], f"{g['op']} {g['threshold']:.4g}", _num(g["value"], ".4g"),
                               "[green]pass[/]" if g["passed"] else f"[red]FAIL[/] {g['message']}")
        console.print(gate_table)
