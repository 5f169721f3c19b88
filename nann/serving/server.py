"""Run tritonserver on a model repository: the binary bundled in the `nvidia-pytriton` wheel by default, or
another Triton build (`nann serve --tritonserver PATH` / $NANN_TRITONSERVER, e.g. NGC's container's
/opt/tritonserver/bin/tritonserver, which has the TensorRT backend the wheel lacks).

`TritonServer` is used by `nann serve`, the demo, the perf scripts and the integration tests alike:
it lays out a backend directory (for the bundled binary: symlinks to the wheel's Python backend and the stub
for this interpreter; for another build: its own `backends/` folder, or `--backend-directory`), refuses a
repository whose models need a backend the server lacks (a TensorRT `scorer`) before starting anything,
starts the server on the given ports (loopback by default), waits until the server and every model in the
repository are ready, and stops it cleanly.

A model that fails to load ends the start at once (Triton logs `failed to load 'MODEL' version N: ERROR`, then may
spend a long time unloading the others, or hang, before it exits): the server and its stub processes are killed and
`start` raises `LoadFailed` naming the model and Triton's error, so `nann serve` exits non-zero within a second or two
of the failure instead of waiting out the readiness timeout.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nann.errors import UserError

PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
TRITONSERVER_ENV = "NANN_TRITONSERVER"
TENSORRT_MODEL = re.compile(r'^\s*(platform:\s*"tensorrt_plan"|backend:\s*"tensorrt")', re.MULTILINE)
# Triton's log lines that decide a start: a model's load failed (the error up to its traceback, which the log shows as
# a literal \n), or the server could not be created (printed once every model is loaded or failed and unloaded)
MODEL_LOAD_FAILED = re.compile(
    r"failed to load '(?P<model>[^']+)' version \d+: (?P<error>.*?)(?:\\n|\"?$)", re.MULTILINE)
SERVER_FAILED = re.compile(r"^error: creating server: (?P<error>.*)$", re.MULTILINE)


class LoadFailed(UserError):
    """tritonserver could not load the repository: `model` (None when Triton did not name one) and Triton's `error`."""

    def __init__(self, model: str | None, error: str, log_path: Path | None, log_tail: str = ""):
        self.model, self.error = model, error
        what = f"model '{model}' failed to load in tritonserver" if model else "tritonserver failed to start"
        super().__init__(f"{what}: {error}; tritonserver and its stub processes were stopped; its log: {log_path}"
                         + (f"\n{log_tail}" if log_tail and not model else ""))


def load_failure(log_text: str) -> tuple[str | None, str] | None:
    """(model, Triton's error) of the first failed model load in a tritonserver log, else of a failed server creation;
    None when the log shows neither."""
    failed = MODEL_LOAD_FAILED.search(log_text)
    if failed:
        return failed["model"], failed["error"]
    fatal = SERVER_FAILED.search(log_text)
    return (None, fatal["error"]) if fatal else None


def pytriton_server_root() -> Path:
    """The `tritonserver/` folder of the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as e:
        raise UserError("nvidia-pytriton is not installed: run `make venv` (or pip install nvidia-pytriton==0.7.0)") from e
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise UserError(f"no tritonserver binary under {root}: reinstall nvidia-pytriton==0.7.0")
    return root


def make_backend_dir(target: Path) -> Path:
    """Create `target/python/` holding symlinks to the wheel's Python backend and this Python's stub."""
    root = pytriton_server_root()
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if not stub.exists():
        raise UserError(f"nvidia-pytriton ships no Python backend stub for Python {sys.version_info.major}.{sys.version_info.minor}")
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in [root / "backends" / "python" / name for name in PYTHON_BACKEND_FILES] + [stub]:
        link = python_dir / src.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)
    return target


def external_tritonserver(path: str | Path | None = None) -> Path | None:
    """The tritonserver binary to run instead of the bundled one: `path`, else $NANN_TRITONSERVER, else None."""
    value = path or os.environ.get(TRITONSERVER_ENV)
    if not value:
        return None
    binary = Path(value).expanduser().absolute()  # not resolved: a symlinked binary keeps its own backends/
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise UserError(f"tritonserver {value} is not an executable file (--tritonserver / ${TRITONSERVER_ENV})")
    return binary


def tensorrt_models(repo: Path) -> list[str]:
    """Models of a repository whose config.pbtxt asks for the TensorRT backend (read from the configs only)."""
    return sorted(cfg.parent.name for cfg in Path(repo).glob("*/config.pbtxt")
                  if TENSORRT_MODEL.search(cfg.read_text()))


def free_ports(count: int, taken=()) -> list[int]:
    """`count` distinct free ports, none of `taken`: bound all at once, so that the kernel cannot hand the same port out
    twice (ports asked for one after another, each released before the next, came back equal now and then: a server
    then failed to start, "cannot listen to HTTP requests and metrics requests at the same address and port")."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in taken:
                ports.append(port)
        return ports


def free_port() -> int:
    return free_ports(1)[0]


def live_group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of process group `pgid`, from /proc."""
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def wait_for_group_exit(pgid: int, timeout: float = 10.0) -> None:
    """Wait until the processes of a SIGKILLed group are gone: a stub killed with its server can still run for a moment
    on a busy CPU (the fault tests found one alive right after `stop`, beside two busy processes)."""
    deadline = time.monotonic() + timeout
    while live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


@dataclass
class TritonServer:
    """One tritonserver process. Use as a context manager, or call start() and stop()."""

    repo: Path
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    model_control_mode: str = "none"
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    shm_default_mb: int = 16
    tritonserver: Path | None = None        # another Triton build's binary; None: $NANN_TRITONSERVER, else bundled
    backend_directory: Path | None = None   # None: the bundled Python backend, or the other build's backends/
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _workdir: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)
    _log_start: int = field(default=0, init=False, repr=False)  # where this start's part of the (appended) log begins
    expected_stubs: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.repo = Path(self.repo).resolve()
        unset = [name for name in ("grpc_port", "http_port", "metrics_port") if not getattr(self, name)]
        given = {getattr(self, name) for name in ("grpc_port", "http_port", "metrics_port")} - {0}
        for name, port in zip(unset, free_ports(len(unset), taken=given)):
            setattr(self, name, port)
        self.tritonserver = external_tritonserver(self.tritonserver)
        if self.backend_directory is None and self.tritonserver is not None:
            self.backend_directory = self.tritonserver.parent.parent / "backends"  # <prefix>/bin/tritonserver
        if self.backend_directory is not None:
            self.backend_directory = Path(self.backend_directory).expanduser().absolute()

    @property
    def grpc_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.http_port}"

    def check_backends(self) -> None:
        """Refuse, before starting anything, a repository with a TensorRT model this server cannot load."""
        trt = tensorrt_models(self.repo)
        if not trt:
            return
        if self.backend_directory is None:
            raise UserError(f"{self.repo}'s {trt[0]} is a TensorRT plan; the bundled tritonserver has only the Python "
                            "backend: run with --tritonserver PATH (a Triton build with the TensorRT backend, "
                            "e.g. NGC's container)")
        if not (self.backend_directory / "tensorrt").is_dir():
            raise UserError(f"{self.repo}'s {trt[0]} is a TensorRT plan; backend directory {self.backend_directory} "
                            "has no tensorrt/ backend: pass --backend-directory (a Triton build's backends/ folder)")

    @property
    def shm_prefix(self) -> str:
        """The name prefix of this server's Python-backend shared-memory regions (/dev/shm)."""
        return f"nann{os.getpid()}_{self.grpc_port}_"

    def command(self, backend_dir: Path) -> list[str]:
        return [
            str(self.tritonserver or pytriton_server_root() / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={backend_dir}",
            f"--model-control-mode={self.model_control_mode}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--backend-config=python,shm-default-byte-size={self.shm_default_mb * 1024 * 1024}",
            f"--backend-config=python,shm-growth-byte-size={4 * 1024 * 1024}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def start(self, timeout: float = 120.0) -> "TritonServer":
        if not self.repo.is_dir():
            raise UserError(f"model repository {self.repo} does not exist: run `nann export` first")
        self.check_backends()
        if self.backend_directory is not None and not self.backend_directory.is_dir():
            raise UserError(f"backend directory {self.backend_directory} does not exist: pass --backend-directory")
        self._workdir = tempfile.TemporaryDirectory(prefix="nann-triton-")
        backend_dir = self.backend_directory or make_backend_dir(Path(self._workdir.name) / "backends")
        if self.log_path is None:
            self.log_path = Path(self._workdir.name) / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # append: a restart keeps the log of the crash before it
        self._log_start = log.tell()
        self._proc = subprocess.Popen(self.command(backend_dir), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        self.expected_stubs = set(self.stub_processes())
        return self

    def stub_processes(self) -> dict[str, int]:
        """{instance name (e.g. "scorer_0_0"): pid} of this server's live Python backend stub processes (from /proc)."""
        if not self.running():
            return {}
        stubs = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] == "Z" or int(fields[1]) != self.pid:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 8:
                stubs[argv[8].decode(errors="replace")] = int(entry)
        return stubs

    def dead_stubs(self) -> list[str]:
        """Model instances whose stub process died since the server became ready.

        Triton 2.51's Python backend does not restart a dead stub and keeps reporting the model ready; every
        request to that instance then fails ("Stub process 'X' is not healthy"). `supervise` restarts the server.
        """
        return sorted(self.expected_stubs - set(self.stub_processes()))

    def restart(self, timeout: float = 120.0, stop_timeout: float = 5.0) -> "TritonServer":
        """Stop (SIGKILL after `stop_timeout`: a model whose stub died never unloads) and start again, same ports."""
        self.stop(stop_timeout)
        return self.start(timeout)

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        """Return once the server and every model are ready; raise LoadFailed (after ending the server and its stubs)
        as soon as the log shows a failed load or the process exits, UserError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self._proc is None or self._proc.poll() is not None
            failure = self.load_failure()
            if failure or exited:
                code = self._proc and self._proc.returncode
                self.stop(timeout=0)
                raise LoadFailed(*(failure or (None, f"tritonserver exited while loading (code {code})")),
                                 self.log_path, self.log_tail())
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise UserError(f"tritonserver was not ready after {timeout:.0f} s; its log: {self.log_path}\n{self.log_tail()}")

    def load_failure(self) -> tuple[str | None, str] | None:
        """(model, error) of a failed load in this start's complete log lines (`load_failure`), else None."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        return load_failure(text[:text.rfind("\n") + 1])

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT, then after `timeout` seconds (0: at once) SIGKILL to the server's process group, which holds its stub
        processes (also those a crashed server left behind); then the shared memory of a killed server is removed."""
        if self._proc is not None:
            if self._proc.poll() is None and timeout > 0:
                self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # the server exited and its stubs with it
                pass
            self._proc.wait()
            wait_for_group_exit(self._proc.pid)
            for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)
        self._proc = None
        if self._workdir is not None and self.log_path is not None and str(self.log_path).startswith(self._workdir.name):
            # keep the log of a temporary server readable after stop: move it next to the temp dir
            kept = Path(tempfile.gettempdir()) / f"nann-tritonserver-{self.grpc_port}.log"
            try:
                Path(self.log_path).replace(kept)
                self.log_path = kept
            except OSError:
                pass
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start() if not self.running() else self

    def __exit__(self, *exc) -> None:
        self.stop()


def supervise(server: TritonServer, should_stop, max_restarts: int = 5, window_s: float = 600.0,
              interval: float = 0.5, say=lambda msg: print(msg, file=sys.stderr)) -> int:
    """Keep `server` serving until should_stop() is true; returns 0 then, or 1 after too many restarts.

    Restarts tritonserver (same ports) when it exits (e.g. a crash) or when a Python model's stub process died,
    which Triton itself neither repairs nor reports through readiness. At most `max_restarts` within `window_s`.
    """
    restarts: list[float] = []
    while not should_stop():
        reason = None
        if not server.running():
            reason = f"tritonserver exited (code {server._proc and server._proc.returncode})"
        elif server.model_control_mode != "explicit":  # in explicit mode an unload legitimately ends a stub
            dead = server.dead_stubs()
            if dead:
                reason = f"the stub process of {', '.join(dead)} died"
        if reason is None:
            time.sleep(interval)
            continue
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < window_s] + [now]
        if len(restarts) > max_restarts:
            say(f"nann serve: error: {reason}; gave up after {max_restarts} restarts in {window_s:.0f} s; "
                f"log: {server.log_path}\n{server.log_tail()}")
            server.stop(5.0)
            return 1
        say(f"nann serve: {reason}; restarting tritonserver (log: {server.log_path})")
        try:
            server.restart()
        except UserError as e:
            say(f"nann serve: error: restart failed: {e}")
            return 1
        say(f"ready again: gRPC {server.grpc_url}")
    return 0


def main(args) -> int:
    """`nann serve`: run until Ctrl-C / SIGTERM."""
    from nann.serving.repository import verify_repository

    verify_repository(Path(args.repo))
    log_path = Path(args.repo).resolve().parent / "tritonserver.log"
    server = TritonServer(Path(args.repo), args.grpc_port, args.http_port, args.metrics_port, host=args.host,
                          model_control_mode=args.model_control_mode, log_path=log_path,
                          extra_args=list(args.triton_args), tritonserver=args.tritonserver,
                          backend_directory=args.backend_directory)
    server.check_backends()
    stop_requested = False

    def _on_signal(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print(f"starting tritonserver on {args.host} (gRPC {server.grpc_port}, HTTP {server.http_port}, "
          f"metrics {server.metrics_port}); log: {log_path}", file=sys.stderr)
    server.start()
    print(f"ready: gRPC {server.grpc_url}  (Ctrl-C to stop)", file=sys.stderr)
    if supervise(server, lambda: stop_requested):
        return 1
    server.stop()
    print("stopped", file=sys.stderr)
    return 0
