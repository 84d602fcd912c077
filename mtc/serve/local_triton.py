"""A real Triton server on this machine, from the binary `nvidia-pytriton` ships.

Triton's own wheel and container need a matching OS and usually a GPU; pytriton's bundled
server runs on a CPU-only x86 Linux machine with the Python backend, which is what the
`--kind python` repositories need. Two things make its Python backend work outside pytriton:

- the backend stub is linked against `libpython3.X.so`, found through LD_LIBRARY_PATH: it must
  be the library of the Python environment that holds the model's packages;
- the stub's embedded interpreter finds its environment by looking up `python3` on PATH, so the
  environment's `bin` goes first on PATH. That environment needs numpy < 2 (the stub is built
  against numpy 1; with numpy 2 its outputs came back empty), `nvidia-pytriton`, and mtc.

The server listens on 127.0.0.1 only, on free ports, and is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from mtc.errors import MtcError

SERVER_EXTRA_HINT = ("create a Python environment with `pip install 'mtc[triton-server]'` (nvidia-pytriton and "
                     "numpy<2) and pass its interpreter")
# What the server's environment must say about itself, asked from its own interpreter.
_PROBE = """
import json, sys, sysconfig
from pathlib import Path
try:
    import pytriton, numpy
except ImportError as exc:
    print(json.dumps({"missing": exc.name})); raise SystemExit
print(json.dumps({"dist": str(Path(pytriton.__file__).parent / "tritonserver"),
                  "libs": str(Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"),
                  "libdir": sysconfig.get_config_var("LIBDIR"), "version": "%d.%d" % sys.version_info[:2],
                  "numpy": numpy.__version__, "bin": str(Path(sys.executable).parent)}))
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def describe_environment(python: str | Path) -> dict:
    """Where pytriton's server lives in the environment of `python`, and what that environment has.

    Raises:
        MtcError: the interpreter does not run, lacks nvidia-pytriton, or has numpy 2.
    """
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise MtcError(f"cannot run the Triton environment's Python {python}: {exc.strerror}",
                       hint=SERVER_EXTRA_HINT) from None
    if done.returncode != 0 or not done.stdout.strip():
        raise MtcError(f"{python} failed to describe its environment: {done.stderr.strip()[-300:]}",
                       hint=SERVER_EXTRA_HINT)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if "missing" in info:
        raise MtcError(f"the Python environment of {python} lacks {info['missing']}", hint=SERVER_EXTRA_HINT)
    if int(info["numpy"].split(".")[0]) >= 2:
        raise MtcError(f"the Python environment of {python} has numpy {info['numpy']}; Triton's Python backend "
                       "stub needs numpy < 2", hint="pip install 'numpy<2' in that environment")
    return info


class LocalTriton:
    """Start Triton on a model repository; use as a context manager.

    Args:
        repository: the model repository (e.g. from `mtc package --triton`).
        python: the interpreter of the environment that has nvidia-pytriton, numpy < 2 and mtc.
        extra_env: more environment for the server and its models (e.g. PYTHONPATH).
        startup_seconds: how long loading the models may take.
        http_port, grpc_port: where to listen on 127.0.0.1 (0: a free port).
        models: load only these models of the repository (None: all of them). This server has
            the Python backend only, so network and ensemble models cannot load here.
    """

    def __init__(self, repository: str | Path, *, python: str | Path = sys.executable, extra_env: dict | None = None,
                 startup_seconds: float = 120.0, http_port: int = 0, grpc_port: int = 0,
                 models: list[str] | None = None):
        self.repository = Path(repository)
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.startup_seconds = startup_seconds
        self.http_port, self.grpc_port = http_port, grpc_port
        self.models = list(models or [])
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self.log_path: Path | None = None
        self.log = ""  # the server's whole log, once stopped

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _backend_directory(self, info: dict) -> Path:
        """pytriton's Python backend with the stub for this Python version, as Triton expects it."""
        python_backend = self._workdir / "backends" / "python"
        python_backend.mkdir(parents=True)
        dist = Path(info["dist"])
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (python_backend / name).symlink_to(dist / "backends" / "python" / name)
        shutil.copy2(dist / "python_backend_stubs" / info["version"] / "triton_python_backend_stub", python_backend)
        return python_backend.parent

    def start(self) -> LocalTriton:
        info = describe_environment(self.python)
        self._workdir = Path(tempfile.mkdtemp(prefix="mtc-triton-"))
        backends = self._backend_directory(info)
        self.http_port, self.grpc_port = self.http_port or _free_port(), self.grpc_port or _free_port()
        env = {**os.environ, **self.extra_env}
        env["PATH"] = f"{info['bin']}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (info["libdir"], info["libs"], env.get("LD_LIBRARY_PATH"))
                                                 if p)
        command = [str(Path(info["dist"]) / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                   f"--backend-directory={backends}", "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                   "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}", "--allow-metrics=false",
                   "--exit-timeout-secs=10"]
        if self.models:
            command += ["--model-control-mode=explicit", *(f"--load-model={name}" for name in self.models)]
        self.log_path = self._workdir / "server.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def first_error(self) -> str:
        """The server log's first model-load failure (the line that says why), else its last line."""
        lines = self.log_tail(200).splitlines()
        reason = next((line for line in lines if "failed to load" in line), lines[-1] if lines else "no log")
        return reason.split("\\n")[0][:400]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_seconds
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, reason = self.process.returncode, self.first_error()
                self.stop()
                raise MtcError(f"Triton exited with status {code} while loading {self.repository}: {reason}",
                               hint="fix what the log names; this server runs Python-backend models only "
                                    "(load those alone with --model NAME)")
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise MtcError(f"Triton was not ready within {self.startup_seconds:g} s: {self.first_error()}",
                       hint="give it more time (startup_seconds), or fix what the log names")

    def stop(self) -> int | None:
        """SIGTERM, then wait for Triton to unload its models; returns its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log = self.log_tail(10_000)
        shutil.rmtree(self._workdir, ignore_errors=True)
        return self.process.returncode

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m mtc.serve.local_triton REPO [--python PY]`: serve until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mtc.serve.local_triton", description=main.__doc__)
    parser.add_argument("repository", type=Path)
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the server's environment (nvidia-pytriton, numpy<2, mtc)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--model", action="append", dest="models", metavar="NAME",
                        help="load only this model (repeatable; default: every model in the repository)")
    args = parser.parse_args(argv)
    from mtc.fsutil import terminate_like_interrupt

    terminate_like_interrupt()  # `kill` stops the server too, as Ctrl-C does
    try:
        with LocalTriton(args.repository, python=args.python, http_port=args.http_port,
                         grpc_port=args.grpc_port, models=args.models) as server:
            print(f"Triton is serving {args.repository}: HTTP {server.http_url}, gRPC {server.grpc_url} "
                  "(Ctrl-C stops it)", flush=True)
            server.process.wait()
    except MtcError as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
