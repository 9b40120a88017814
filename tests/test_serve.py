"""`elmrec serve` / `elmrec stop`: a real local Prefect server, work pool, deployments and worker, one deployment
run of the demo on a tiny dataset, and nothing left running afterwards."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from elmrec import tracking
from elmrec.app import serve
from elmrec.app.processes import Proc
from elmrec.config import settings_for
from tests.conftest import T5_SMALL, tiny_pipeline, write_p5


def elmrec(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "elmrec.app.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def deployment_run(params: dict, api: str, env: dict[str, str], home: Path, expect_success: bool = True) -> str:
    """`prefect deployment run elmrec/demo --watch` as a user types it; returns the flow-run id."""
    run = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "elmrec/demo", "--watch",
                          "--watch-interval", "1", "--watch-timeout", "400", "--params", json.dumps(params)],
                         env={**env, "PREFECT_API_URL": api}, capture_output=True, text=True, timeout=450, check=False)
    assert (run.returncode == 0) == expect_success, run.stdout + run.stderr + (home / "worker.log").read_text()[-3000:]
    return re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)


def wait_for_state(api: str, flow_run_id: str, timeout: float = 300) -> str:
    """The flow run's final state type, once it has one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = serve.api_request(api, f"/flow_runs/{flow_run_id}")["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(1)
    return "TIMEOUT"


def task_states(api: str, flow_run_id: str) -> dict[str, list[str]]:
    """{task name: [state names]} of one flow run, from the server's REST API."""
    runs = serve.api_request(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run["name"].rsplit("-", 1)[0], []).append(run["state"]["name"])
    return states


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def busy_port() -> Iterator[int]:
    """A port something else listens on, while in the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def services_under(home: Path) -> set[int]:
    """Pids of the `prefect server`/`prefect worker` processes whose PREFECT_HOME is `home` (Linux /proc)."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        is_service = {b"prefect", b"server"} <= set(cmdline) or {b"prefect", b"worker"} <= set(cmdline)
        if is_service and f"PREFECT_HOME={home}".encode() in environ:
            found.add(int(proc.name))
    return found


def test_unit_port_choice_and_state_round_trip(tmp_path: Path) -> None:
    assert serve.choose_port(None, None) > 0
    state = serve.ServeState(4321, "http://127.0.0.1:4321/api", "/src", Proc.of(os.getpid()), None)
    state.save(tmp_path / "serve.json")
    assert serve.ServeState.load(tmp_path / "serve.json") == state and state.ui_url() is None
    assert [p.name for p in tmp_path.iterdir()] == ["serve.json"]  # no temporary file left behind
    assert serve.stop(tmp_path / "nothing") == []
    with_ui = serve.ServeState(4321, "http://127.0.0.1:4321/api", "/src", Proc.of(os.getpid()), None,
                               Proc.of(os.getpid()), 5001)
    with_ui.save(tmp_path / "serve.json")
    assert serve.ServeState.load(tmp_path / "serve.json") == with_ui and with_ui.ui_url() == "http://127.0.0.1:5001"
    assert serve.mlflow_ui_url(tmp_path / "nothing") is None


def test_a_port_in_use_is_passed_over_for_the_next_free_one(capsys: pytest.CaptureFixture[str]) -> None:
    with busy_port() as taken:
        assert not serve.port_free(taken)
        chosen = serve.choose_port(taken, None, what="the Prefect server")
        assert chosen > taken and serve.port_free(chosen)
        assert capsys.readouterr().err == f"elmrec: port {taken} on 127.0.0.1 is in use; the Prefect server takes " \
                                          f"port {chosen}\n"
        assert serve.choose_port(None, taken, default=taken, what="the MLflow UI") == chosen  # previous port busy
        assert "the MLflow UI takes port" in capsys.readouterr().err
        assert serve.choose_port(None, chosen) == chosen and capsys.readouterr().err == ""  # the previous one, free


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="checks processes through /proc")
def test_serve_runs_a_deployment_and_stop_ends_what_it_started(tmp_path: Path, tiny_histories) -> None:
    workdir = tmp_path / "work"
    home = workdir / "prefect"
    raw = write_p5(tmp_path / "tiny", tiny_histories, n_items=150)
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    env.pop("ELMREC_WORKDIR", None)
    recorded: list[Proc] = []
    try:
        started = time.monotonic()
        with busy_port() as port, busy_port() as ui_port:  # not 4200 or 5000: another run of this test may hold it
            first = elmrec("serve", "--workdir", str(workdir), "--port", str(port), "--ui", "--ui-port", str(ui_port),
                           env=env)
        serve_s = time.monotonic() - started
        assert first.returncode == 0, first.stdout + first.stderr
        state = json.loads((home / "serve.json").read_text())
        recorded = [Proc(**state["server"]), Proc(**state["worker"]), Proc(**state["ui"])]
        api, ui = state["api_url"], f"http://127.0.0.1:{state['ui_port']}"
        assert state["port"] > port and state["ui_port"] > ui_port  # the ports in use were passed over, and said so
        assert f"port {port} on 127.0.0.1 is in use; the Prefect server takes port {state['port']}" in first.stderr
        assert f"port {ui_port} on 127.0.0.1 is in use; the MLflow UI takes port {state['ui_port']}" in first.stderr
        assert f"export PREFECT_API_URL={api}" in first.stdout and api == f"http://127.0.0.1:{state['port']}/api"
        assert f"MLflow UI {ui} (pid {state['ui']['pid']})" in first.stdout and serve.ui_answers(state["ui_port"])
        assert serve.healthy(api, home) and not serve.healthy(api, tmp_path)  # it is this server
        shown = elmrec("ui", "--workdir", str(workdir), env=env)  # the UI that runs, not a second one
        assert shown.returncode == 0 and shown.stdout.endswith(f"runs for this work dir: {ui}\n"), shown.stdout

        again = elmrec("serve", "--workdir", str(workdir), env=env)
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
        assert json.loads((home / "serve.json").read_text()) == state
        assert services_under(home) == {p.pid for p in recorded[:2]}  # one server, one worker
        workers = serve.api_request(api, f"/work_pools/{serve.POOL}/workers/filter", {})
        assert [w["name"] for w in workers if w["status"] == "ONLINE"] == [serve.WORKER_NAME]
        deployments = serve.api_request(api, "/deployments/filter", {})
        assert {d["name"] for d in deployments} >= {"demo", "full"}
        form = serve.api_request(api, "/deployments/name/elmrec/demo")["parameter_openapi_schema"]  # the UI's form
        fields = form["definitions"]["CommonSettings"]["properties"]
        assert form["properties"]["settings"]["$ref"] == "#/definitions/CommonSettings"
        assert (fields["dataset"]["type"], fields["dataset"]["enum"]) == ("string", ["beauty", "sports", "toys"])
        assert (fields["max_users"]["type"], fields["max_users"]["minimum"]) == ("integer", 3)

        params = {"preset": "demo", "variants": ["elmrec"], "settings": {"seed": 7}, "overrides": tiny_pipeline(raw)}
        started = time.monotonic()
        first_run = deployment_run(params, api, env, home)
        run_s = time.monotonic() - started
        flow_runs = serve.api_request(api, "/flow_runs/filter", {})
        assert [(r["state_type"], r["parameters"]["overrides"]["data"]["path"]) for r in flow_runs] == [
            ("COMPLETED", str(raw))]
        assert set(task_states(api, first_run)["train"]) == {"Completed"}
        stats = list((workdir / "tiny").rglob("data/stats.json"))  # the worker wrote into serve's work dir
        assert len(stats) == 1 and json.loads(stats[0].read_text())["n_users"] == 4

        settings = settings_for("demo", tiny_pipeline(raw, workdir))
        parents = tracking.find_runs(settings, "tags.`elmrec.role` = 'parent'")
        assert [p["tags"]["prefect.flow_run_id"] for p in parents] == [first_run]
        assert parents[0]["tags"]["prefect.deployment"] == "demo" and parents[0]["params"]["stats.data.n_users"] == "4"
        children = tracking.find_runs(settings, f"tags.`mlflow.parentRunId` = '{parents[0]['run_id']}'")
        assert sorted(c["name"] for c in children) == [f"{n} · tiny" for n in ("elmrec", "id_order", "popularity",
                                                                                "random")]
        assert "test/direct/score/hr_at_10" in next(c for c in children if c["name"] == "elmrec · tiny")["metrics"]

        # one stage without the first run's settings: its inputs are not there, said before any task runs
        started = time.monotonic()
        bare = deployment_run({"stages": ["evaluate"]}, api, env, home, expect_success=False)
        bare_s = time.monotonic() - started
        message = serve.api_request(api, f"/flow_runs/{bare}")["state"]["message"]
        assert "interactions.parquet is missing; run `elmrec task preprocess` first (same options)" in message
        assert "rerun_of" in message and task_states(api, bare) == {}, (message, task_states(api, bare))
        assert tracking.find_runs(settings, f"tags.`prefect.flow_run_id` = '{bare}'") == []  # no MLflow run left

        # the README's rerun: the first run's settings (preset, form, overrides, variants), evaluation only
        second_run = deployment_run({"rerun_of": first_run, "stages": ["evaluate"], "force": ["evaluate"]}, api,
                                    env, home)
        states = task_states(api, second_run)
        assert states["evaluate"] == ["Completed"] and states["baselines"] == ["Completed"], states
        assert not {"download", "preprocess", "graph", "train"} & set(states), states
        rerun = tracking.find_runs(settings, f"tags.`prefect.flow_run_id` = '{second_run}'")
        assert [(r["name"], r["status"], r["params"]["seed"]) for r in rerun if r["tags"]["elmrec.role"] == "parent"] \
            == [("demo · tiny · elmrec", "FINISHED", "7")]

        # a run that fails in training (its model mirror lacks t5-small) and is retried once the mirror is fixed
        mirror = tmp_path / "models"
        mirror.mkdir()
        overrides = params["overrides"]
        broken = {**params, "overrides": {**overrides, "train": {**overrides["train"], "max_epochs": 2},
                                          "model": {**overrides["model"], "model_mirror": str(mirror)}}}
        failed = deployment_run(broken, api, env, home, expect_success=False)
        (mirror / "t5-small").symlink_to(T5_SMALL)
        retry = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "retry", failed],
                               env={**env, "PREFECT_API_URL": api}, capture_output=True, text=True, timeout=60)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        assert wait_for_state(api, failed) == "COMPLETED", (home / "worker.log").read_text()[-3000:]
        states = task_states(api, failed)
        assert sorted(states["train"]) == ["Completed", "Failed"] and states["graph"] == ["Cached", "Cached"], states
        parents = tracking.find_runs(settings, f"tags.`prefect.flow_run_id` = '{failed}'")
        assert [(p["tags"]["elmrec.role"], p["status"]) for p in parents if p["tags"]["elmrec.role"] == "parent"] == [
            ("parent", "FINISHED")]  # the retry attached to the first attempt's parent run
        print(f"elmrec serve --ui (cold): {serve_s:.1f}s · deployment run elmrec/demo (--watch): {run_s:.1f}s · "
              f"a rerun without the settings fails in {bare_s:.1f}s")
    finally:
        stopped = elmrec("stop", "--workdir", str(workdir), env=env, timeout=120)
        serve.stop(workdir)  # a safety net, should the command above have failed
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert recorded and all(str(p.pid) in stopped.stdout for p in recorded)
    assert not any(p.alive() for p in recorded)  # the MLflow UI too
    assert services_under(home) == set() and not (home / "serve.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="checks processes through /proc")
def test_a_failed_serve_leaves_nothing_running(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    try:
        failed = elmrec("serve", "--workdir", str(workdir), "--port", str(free_port()), "--timeout", "1",
                        env=dict(os.environ))
    finally:
        serve.stop(workdir)  # a safety net
    assert failed.returncode == 1 and "the Prefect server did not come up within 1s" in failed.stderr, failed.stderr
    assert services_under(workdir / "prefect") == set() and not (workdir / "prefect" / "serve.json").exists()
