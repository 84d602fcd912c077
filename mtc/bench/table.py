"""The short human summary of a bench report (rich tables)."""

from __future__ import annotations


def _num(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _pair(acc: dict | None) -> str:
    if not acc:
        return "-"
    parts = [f"MAD {acc['mad']:.3g}" if "mad" in acc else None, f"dtSSD {acc['dtssd']:.3g}" if "dtssd" in acc else None]
    return ", ".join(p for p in parts if p) or "-"


def print_report(report: dict, console) -> None:
    """Print the results table and, when gates were checked, the gate table."""
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
    gates = report.get("gates")
    if gates:
        gate_table = Table(title=f"gates from {gates['file']}: {'PASSED' if gates['passed'] else 'FAILED'}")
        for column in ("resolution", "gate", "threshold", "value", "result"):
            gate_table.add_column(column, justify="right" if column in ("threshold", "value") else "left")
        for g in gates["results"]:
            gate_table.add_row(g["resolution"], g["gate"], f"{g['op']} {g['threshold']:.4g}", _num(g["value"], ".4g"),
                               "[green]pass[/]" if g["passed"] else f"[red]FAIL[/] {g['message']}")
        console.print(gate_table)
