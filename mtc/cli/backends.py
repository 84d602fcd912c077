"""`mtc backends`: what each registered backend can do on this machine, and what auto picks."""

from __future__ import annotations

import click


@click.command()
def backends() -> None:
    """List the registered backends: usable here or not (and the fix), the auto order, and the
    artifacts each runs less faithfully on this machine."""
    from mtc.backends.registry import backends as registered
    from mtc.backends.registry import choose_backend, probe_availability

    available = probe_availability()
    click.echo(f"CPU class: {available.cpu}; NVIDIA GPUs: {available.gpu_count}")
    probes = sorted(((entry.probe(available), entry) for entry in registered().values()), key=lambda p: p[0].rank)
    for probe, entry in probes:
        if probe.usable:
            click.echo(f"{entry.name}: usable, auto rank {probe.rank} ({probe.reason})")
        else:
            click.echo(f"{entry.name}: not usable: {probe.reason} ({probe.fix})")
        for kind, why in sorted(probe.unfaithful.items()):
            click.echo(f"  {kind}: runs {why}")
    for precision, label in (("fp32", "FP32"), ("int8", "INT8 (uint8 activations, checked on this CPU class)"),
                             ("fp16", "FP16")):
        choice = choose_backend("auto", available, model_precision=precision,
                                activation_type="uint8" if precision == "int8" else None, checked_cpu=available.cpu)
        click.echo(f"auto for {label} artifacts: {choice.name}")
