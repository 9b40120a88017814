"""Local orchestration: a Prefect server, a process work pool, the deployments of `prefect.yaml` and a worker.

    elmrec serve [--ui]   start whatever is not running (idempotent), with --ui the MLflow UI too; state in
                          <workdir>/prefect/serve.json
    elmrec stop           end exactly the processes `serve` recorded
    elmrec ui             the MLflow UI on the work dir's store (foreground; or the address of serve's)

Everything lives under `<workdir>/prefect/`: it is the PREFECT_HOME of the processes started here and holds the
server's SQLite database, the logs, `serve.json` (pids, ports, API URL) and `env.sh` (the `export
PREFECT_API_URL=...` a shell needs). A port in use (Prefect's 4200, MLflow's 5000, or the one asked for) is
passed over for the next free one, said on stderr; serve.json records the ports taken, and every link printed
(serve's banner, the links `elmrec run` ends with, the run summary's) is made from it. The server, the worker
and the UI are started detached, each leading its own process session, so they outlive the shell that started
them; `stop` ends their process groups. Prefect is driven through its command line and REST API, never imported.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from elmrec.app.processes import Proc, ServiceError, end, log_to, spawn, tail, wait_for
from elmrec.config import settings_for
from elmrec.paths import atomic_path, locked

POOL = "elmrec-local"  # the work pool prefect.yaml's deployments name; the worker creates it (type process)
WORKER_NAME = "elmrec-local-worker"
DEFAULT_PORT = 4200  # Prefect's usual port, taken when free
UI_PORT = 5000  # the MLflow UI's usual port, taken when free
HOST = "127.0.0.1"  # local only


@dataclass(frozen=True)
class ServeState:
    """What `serve.json` records."""

    port: int
    api_url: str
    checkout: str  # the folder the deployments run from
    server: Proc
    worker: Proc | None = None
    ui: Proc | None = None  # the MLflow UI (`serve --ui`)
    ui_port: int | None = None

    @classmethod
    def load(cls, path: Path) -> ServeState | None:
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        worker, ui = raw.get("worker"), raw.get("ui")
        return cls(raw["port"], raw["api_url"], raw["checkout"], Proc(**raw["server"]),
                   Proc(**worker) if worker else None, Proc(**ui) if ui else None, raw.get("ui_port"))

    def ui_url(self) -> str | None:
        """The MLflow UI's address while the UI recorded here runs."""
        return f"http://{HOST}:{self.ui_port}" if self.ui and self.ui.alive() else None

    def save(self, path: Path) -> None:
        with atomic_path(path) as partial:  # never a half-written state file
            partial.write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class ServePaths:
    """Every file of the local services, below <workdir>/prefect/."""

    workdir: Path
    home: Path  # PREFECT_HOME of every process started here
    state: Path  # serve.json
    env_file: Path  # env.sh: `source` it for PREFECT_API_URL
    db: Path  # the server's SQLite database
    server_log: Path
    worker_log: Path  # the flow runs' output lands here too
    deploy_log: Path
    ui_log: Path  # the MLflow UI's

    @classmethod
    def under(cls, workdir: Path) -> ServePaths:
        home = workdir.resolve() / "prefect"
        return cls(workdir.resolve(), home, home / "serve.json", home / "env.sh", home / "prefect.db",
                   home / "server.log", home / "worker.log", home / "deploy.log", home / "mlflow-ui.log")


def default_checkout() -> Path:
    """The project folder holding prefect.yaml, flows/ and tasks/: the checkout this package is installed from
    (editable install) or the current folder."""
    for candidate in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (candidate / "prefect.yaml").is_file():
            return candidate
    raise ServiceError("no prefect.yaml found; run from the elmrec checkout or pass --checkout DIR")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def choose_port(requested: int | None, previous: int | None, default: int = DEFAULT_PORT,
                what: str = "the Prefect server") -> int:
    """The requested port, else the previous one or the default when free; a port in use is passed over for
    the next free one above it, and stderr says so."""
    if requested is None and previous and port_free(previous):
        return previous
    wanted = requested or default
    port = next((p for p in range(wanted, min(wanted + 100, 65536)) if port_free(p)), None)
    if port is None:  # a hundred ports in use: any free one
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
    if port != wanted:
        print(f"elmrec: port {wanted} on {HOST} is in use; {what} takes port {port}", file=sys.stderr, flush=True)
    return port


def api_request(api_url: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """GET (or, with a `body`, POST) one Prefect REST endpoint; the decoded JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{api_url}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def healthy(api_url: str, home: Path | None = None) -> bool:
    """The server at `api_url` answers /health and, given `home`, is the one whose PREFECT_HOME that is."""
    try:
        if api_request(api_url, "/health", timeout=2.0) is not True:
            return False
        return home is None or api_request(api_url, "/admin/settings").get("home") == str(home)
    except (OSError, ValueError, AttributeError):
        return False


def _answers(api_url: str, home: Path, within: float = 10.0) -> bool:
    """healthy(), allowing a busy server a few tries."""
    deadline = time.monotonic() + within
    while not healthy(api_url, home):
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return True


def worker_online(api_url: str, since: float) -> bool:
    """True once the pool lists our worker as online with a heartbeat sent after `since` (epoch seconds)."""
    try:
        workers = api_request(api_url, f"/work_pools/{POOL}/workers/filter", {})
    except (OSError, ValueError):
        return False  # 404 until the worker has created the pool
    for worker in workers:
        beat = worker.get("last_heartbeat_time")
        if worker.get("name") == WORKER_NAME and worker.get("status") == "ONLINE" and beat:
            when = datetime.fromisoformat(beat.replace("Z", "+00:00"))
            if when.replace(tzinfo=when.tzinfo or timezone.utc).timestamp() >= since - 1:
                return True
    return False


def service_env(paths: ServePaths, api_url: str, checkout: Path) -> dict[str, str]:
    """The environment of every process started here: this one's, pointed at the local server, telemetry off.

    ELMREC_MIRROR, ELMREC_MODEL_MIRROR and any PREFECT_* setting of the caller pass through to the flow runs.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_PROFILE", "PREFECT_API_KEY")}
    env.update({
        "PREFECT_HOME": str(paths.home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{paths.db}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the server's usage reports; the SDK asks the server
        "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
        "DO_NOT_TRACK": "true",  # the Prefect SDK's and MLflow's client-side telemetry
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "ELMREC_WORKDIR": str(paths.workdir),  # flow runs write where `serve` was pointed
        "ELMREC_CHECKOUT": str(checkout),  # the pull step of prefect.yaml, read at deploy time
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),  # this venv first
    })
    env.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "elmrec")
    env.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # library logs outside a flow run
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")  # a local server is cheap to poll
    env.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(paths.home / "storage"))  # results shared with `elmrec run`
    return env


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def deploy(env: dict[str, str], checkout: Path, log: Path, timeout: float) -> None:
    """Every deployment of the checkout's prefect.yaml (their work pool must exist: the worker creates it)."""
    command = _prefect("--no-prompt", "deploy", "--all")
    with log_to(log, command) as out:
        done = subprocess.run(command, env=env, cwd=checkout, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if done.returncode != 0:
        raise ServiceError(f"`prefect deploy --all` failed in {checkout}; see {log}:\n{tail(log)}")


def serve(workdir: Path, port: int | None = None, checkout: Path | None = None, timeout: float = 180.0,
          ui: bool = False, ui_port: int | None = None) -> tuple[ServeState, list[str]]:
    """Bring up whatever is not running, with `ui` the MLflow UI too; the state, and what was started ([] when
    everything was up)."""
    paths = ServePaths.under(workdir)
    paths.home.mkdir(parents=True, exist_ok=True)
    with locked(paths.state):  # one `serve` or `stop` at a time per work dir
        state = ServeState.load(paths.state)
        started = []
        if state and state.server.alive() and _answers(state.api_url, paths.home):
            if not (state.worker and state.worker.alive()):
                env = service_env(paths, state.api_url, Path(state.checkout))
                state = replace(state, worker=_start_worker(paths, env, state.api_url, Path(state.checkout), timeout))
                state.save(paths.state)
                started.append("worker")
        else:
            state = _start_server(paths, state, port, checkout, timeout)
            started += ["server", "worker"]
        if ui and not state.ui_url():
            state = _start_ui(paths, state, ui_port, timeout)
            started.append("MLflow UI")
        return state, started


def _start_server(paths: ServePaths, previous: ServeState | None, port: int | None, checkout: Path | None,
                  timeout: float) -> ServeState:
    """A fresh server, worker and deployments; what is left of an earlier start is ended first (a running MLflow
    UI is kept: it does not depend on the server)."""
    ui = previous.ui if previous and previous.ui_url() else None
    if previous:
        end([p for p in (previous.worker, previous.server) if p])
    chosen = choose_port(port, previous.port if previous else None)
    api_url = f"http://{HOST}:{chosen}/api"
    project = (checkout or (Path(previous.checkout) if previous else None) or default_checkout()).resolve()
    env = service_env(paths, api_url, project)
    server = spawn(_prefect("server", "start", "--host", HOST, "--port", str(chosen), "--analytics-off"),
                   env, paths.server_log, project)
    state = ServeState(chosen, api_url, str(project), Proc.of(server.pid), None, ui,
                       previous.ui_port if previous and ui else None)
    state.save(paths.state)  # recorded at once: `elmrec stop` can end it whatever happens next
    try:
        wait_for(lambda: healthy(api_url, paths.home), server, "the Prefect server", paths.server_log, timeout)
        state = replace(state, worker=_start_worker(paths, env, api_url, project, timeout))
        state.save(paths.state)
        deploy(env, project, paths.deploy_log, timeout)
    except BaseException:
        end([p for p in (state.worker, state.server, state.ui) if p])
        paths.state.unlink(missing_ok=True)
        raise
    paths.env_file.write_text(f"export PREFECT_API_URL={api_url}\n")
    return state


def _start_ui(paths: ServePaths, state: ServeState, port: int | None, timeout: float) -> ServeState:
    """The MLflow UI on the work dir's store, detached like the server and recorded in serve.json at once."""
    chosen = choose_port(port, state.ui_port, UI_PORT, "the MLflow UI")
    command, env = mlflow_command(paths.workdir, chosen)
    process = spawn(command, env, paths.ui_log, paths.workdir)
    state = replace(state, ui=Proc.of(process.pid), ui_port=chosen)
    state.save(paths.state)
    try:
        wait_for(lambda: ui_answers(chosen), process, "the MLflow UI", paths.ui_log, timeout)
    except BaseException:
        end([state.ui] if state.ui else [])
        state = replace(state, ui=None, ui_port=None)
        state.save(paths.state)
        raise
    return state


def ui_answers(port: int) -> bool:
    """True once an MLflow server answers /health on the port."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def mlflow_ui_url(workdir: Path) -> str | None:
    """The address of the MLflow UI `elmrec serve --ui` runs for this work dir; None when none runs."""
    try:
        state = ServeState.load(ServePaths.under(workdir).state)
    except (OSError, ValueError, KeyError, TypeError):  # a damaged serve.json: as if none
        return None
    return state.ui_url() if state else None


def _start_worker(paths: ServePaths, env: dict[str, str], api_url: str, checkout: Path, timeout: float) -> Proc:
    since = time.time()
    command = _prefect("worker", "start", "--pool", POOL, "--type", "process", "--name", WORKER_NAME)
    worker = spawn(command, env, paths.worker_log, checkout)
    proc = Proc.of(worker.pid)
    try:
        wait_for(lambda: worker_online(api_url, since), worker, "the worker", paths.worker_log, timeout)
    except BaseException:
        end([proc])
        raise
    return proc


def stop(workdir: Path, timeout: float = 20.0) -> list[int]:
    """End the recorded worker, then the server and the MLflow UI; the pids that were running. Removes
    serve.json."""
    paths = ServePaths.under(workdir)
    paths.home.mkdir(parents=True, exist_ok=True)
    with locked(paths.state):  # one `serve` or `stop` at a time per work dir
        state = ServeState.load(paths.state)
        if state is None:
            return []
        ended = end([state.worker], timeout) if state.worker else []
        ended += end([state.server], timeout)
        ended += end([state.ui], timeout) if state.ui else []
        paths.state.unlink(missing_ok=True)
        paths.env_file.unlink(missing_ok=True)
        return ended


def mlflow_command(workdir: Path, port: int, tracking_uri: str | None = None) -> tuple[list[str], dict[str, str]]:
    """`mlflow ui` on the work dir's store (default: its mlflow.db), and its environment."""
    tracking_uri = tracking_uri or settings_for("paper", {"workdir": str(workdir)}).resolved_tracking_uri()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", HOST,
               "--port", str(port), "--workers", "1", "--artifacts-destination", str(workdir / "mlartifacts")]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job runners: 7 processes, unused here
    return command, env


def mlflow_ui(tracking_uri: str, workdir: Path, port: int) -> NoReturn:
    """Become `mlflow ui` on the given store (exec: Ctrl+C and signals reach MLflow itself); never returns."""
    command, env = mlflow_command(workdir, port, tracking_uri)
    print(f"MLflow UI on {tracking_uri}: http://{HOST}:{port}  (Ctrl+C stops it)", flush=True)
    os.execve(sys.executable, command, env)


# ---- the command line: `elmrec serve | stop | ui` (elmrec/app/cli.py adds these parsers and dispatches here) ----

COMMANDS = ("serve", "stop", "ui")


def add_commands(commands: argparse._SubParsersAction) -> None:
    workdir_help = "the work dir (default: $ELMREC_WORKDIR or ./work); state in <workdir>/prefect/"
    up = commands.add_parser("serve", help="start a local Prefect server, work pool, deployments and worker")
    up.add_argument("--workdir", help=workdir_help)
    up.add_argument("--port", type=int, help=f"server port (default: {DEFAULT_PORT}; one in use: the next free one)")
    up.add_argument("--ui", action="store_true", help="start the MLflow UI too (`elmrec stop` ends it as well)")
    up.add_argument("--ui-port", type=int, help=f"MLflow UI port (default: {UI_PORT}; one in use: the next free one)")
    up.add_argument("--checkout", help="the project folder holding prefect.yaml (default: this checkout)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each service (default: 180)")
    down = commands.add_parser("stop", help="end the server, worker and MLflow UI `elmrec serve` started")
    down.add_argument("--workdir", help=workdir_help)
    ui = commands.add_parser("ui", help="open the MLflow UI on the work dir's tracking store")
    ui.add_argument("--workdir", help=workdir_help)
    ui.add_argument("--port", type=int, help=f"UI port (default: {UI_PORT}; one in use: the next free one)")


def run_command(args: argparse.Namespace) -> int:
    settings = settings_for("paper", {"workdir": args.workdir} if args.workdir else {})
    paths = ServePaths.under(settings.workdir)
    if args.command == "ui":
        if url := mlflow_ui_url(settings.workdir):
            print(f"elmrec: the MLflow UI of `elmrec serve --ui` runs for this work dir: {url}")
            return 0
        mlflow_ui(settings.resolved_tracking_uri(), settings.workdir,
                  choose_port(args.port, None, UI_PORT, "the MLflow UI"))
    if args.command == "stop":
        ended = stop(settings.workdir)
        print(f"elmrec: stopped pids {', '.join(map(str, ended))}" if ended else
              f"elmrec: nothing running was recorded in {paths.state}")
        return 0
    try:
        state, started = serve(settings.workdir, args.port, Path(args.checkout) if args.checkout else None,
                               args.timeout, args.ui, args.ui_port)
    except ServiceError as error:
        print(f"elmrec serve: {error}", file=sys.stderr)
        return 1
    names = [f"the {name}" for name in started]  # the server, the worker and the MLflow UI
    what = "started " + " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names) if started \
        else "already running"
    workdir_option = f" --workdir {shlex.quote(args.workdir)}" if args.workdir else ""
    ui = state.ui_url()
    print(f"elmrec: {what}: Prefect server {state.api_url.removesuffix('/api')} (pid {state.server.pid}), "
          f"worker on pool {POOL} (pid {state.worker.pid if state.worker else '-'})\n"
          + (f"  MLflow UI {ui} (pid {state.ui.pid})\n" if ui and state.ui else
             "  MLflow UI: not started (elmrec serve --ui, or elmrec ui)\n")
          + f"  state {paths.state} · logs {paths.home}/{{server,worker,deploy,mlflow-ui}}.log\n"
          f"in your shell (or: source {paths.env_file}):\n"
          f"  export PREFECT_API_URL={state.api_url}\n"
          f"  prefect deployment run elmrec/demo --watch\n"
          f"stop it with: elmrec stop{workdir_option}")
    return 0
