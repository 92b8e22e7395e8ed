"""The console page in a real headless Chromium (Debian's `chromium`, its DOM
dumped after the page's scripts ran against the real binary): models,
endpoints with live weights and a running canary rollout with its history,
updating as the rollout advances; behind auth, the page shows data only with
a token."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import requests

from conftest import Server
from lifecycle_helpers import wait_for, write_version

ROUTES = """
endpoints:
  scoring:
    variants:
      - {name: stable, model: versioned, version: 1, weight: 100}
      - {name: canary, model: versioned, version: 2}
    canary: {stable: stable, canary: canary, steps: [20, 50, 100], interval: 1500ms,
             min_requests: 5, min_success_rate: 99, failures_to_rollback: 1}
"""
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))}]}
ADMIN = "console-admin-0123456789"


def repository(tmp_path):
    (tmp_path / "versioned").mkdir(parents=True)
    (tmp_path / "versioned" / "config.yaml").write_text("version_policy: all\n")
    write_version(tmp_path, "versioned", 1)
    write_version(tmp_path, "versioned", 2)
    (tmp_path / "routes.yaml").write_text(ROUTES)
    return tmp_path


def dom(url: str, tmp_path) -> str:
    """The page's DOM once its scripts have run (virtual time lets the first refresh finish)."""
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def phase_in(page: str) -> str:
    found = re.search(r'data-rollout="scoring".*?class="phase (\w+)"', page, flags=re.S)
    assert found, page[-3000:]
    return found.group(1)


class Load(threading.Thread):
    def __init__(self, server, headers=None):
        super().__init__(daemon=True)
        self.server, self.headers, self.stop = server, headers or {}, threading.Event()

    def run(self):
        session = requests.Session()
        while not self.stop.is_set():
            session.post(f"http://{self.server.http}/v2/models/scoring/infer", json=BODY, headers=self.headers, timeout=10)
            time.sleep(0.01)


def test_the_console_shows_a_rollout_and_follows_it(tmp_path):
    server = Server(repository=repository(tmp_path / "repo"))
    load = Load(server)
    try:
        page = requests.get(f"http://{server.http}/console", timeout=10)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", ""), "no outside assets"
        load.start()
        first = dom(f"http://{server.http}/console", tmp_path)
        assert 'data-loaded="true"' in first, first[-2000:]
        assert first.count('data-model="versioned"') == 2, "both versions listed"
        assert 'data-endpoint="scoring"' in first and 'data-variant="canary"' in first
        assert phase_in(first) == "progressing"
        assert "started" in first
        wait_for(lambda: requests.get(f"http://{server.http}/v2/rollouts/scoring", timeout=10).json()["phase"] == "promoted",
                 30, "the rollout to promote")
        later = dom(f"http://{server.http}/console", tmp_path)
        assert phase_in(later) == "promoted"
        assert re.search(r'class="decision">promote<', later), "the promotion is in the history table"
        # The canary now has all the weight, as the page shows it.
        canary_row = re.search(r'data-variant="canary">(.*?)</tr>', later, flags=re.S).group(1)
        assert "100.0%" in canary_row, canary_row
    finally:
        load.stop.set()
        assert server.stop() == 0


def test_behind_auth_the_console_needs_a_token_for_its_data(tmp_path):
    server = Server("--admin-tokens", ADMIN, repository=repository(tmp_path / "repo"))
    try:
        # The page itself is static and open; what it shows is not.
        without = dom(f"http://{server.http}/console", tmp_path / "a")
        assert 'data-loaded="true"' not in without and "HTTP 401" in without, without[-2000:]
        assert 'data-model="versioned"' not in without
        with_token = dom(f"http://{server.http}/console#token={ADMIN}", tmp_path / "b")
        assert 'data-loaded="true"' in with_token and 'data-model="versioned"' in with_token
    finally:
        assert server.stop() == 0


def test_the_console_shows_a_model_rollout_with_its_shadow_agreement(tmp_path):
    repo = tmp_path / "repo"
    (repo / "versioned").mkdir(parents=True)
    # A long canary interval keeps it in view once the shadow passes.
    (repo / "versioned" / "config.yaml").write_text(
        "rollout:\n  shadow: {percent: 50, interval: 300ms, min_requests: 5}\n"
        "  canary: {steps: [20, 100], interval: 1h}\n")
    write_version(repo, "versioned", 1)
    server = Server("--repository-poll-interval", "100ms", repository=repo)
    stop = threading.Event()

    def load():
        session = requests.Session()
        while not stop.is_set():
            session.post(f"http://{server.http}/v2/models/versioned/infer", json=BODY, timeout=10)
            time.sleep(0.005)

    thread = threading.Thread(target=load, daemon=True)
    try:
        thread.start()
        write_version(repo, "versioned", 2, __import__("lifecycle_helpers").versioned_bytes(1))
        wait_for(lambda: requests.get(f"http://{server.http}/v2/rollouts/versioned", timeout=10).json().get("stage")
                 == "canary", 30, "the shadow stage to pass")
        page = dom(f"http://{server.http}/console", tmp_path)
        box = re.search(r'data-rollout="versioned"(.*?)</table>', page, flags=re.S)
        assert box, page[-3000:]
        text = box.group(1)
        assert "version 1 → 2" in text and "progressing (canary)" in text, text[:2000]
        assert 'class="chart agreement"' in text, "the agreement chart is drawn"
        assert re.search(r'class="decision">shadow_passed<', text)
        agreed = re.search(r'class="agreement">(\d+)/(\d+)<', text)
        assert agreed and agreed.group(1) == agreed.group(2) and int(agreed.group(2)) >= 5, text[:3000]
    finally:
        stop.set()
        thread.join(timeout=15)
        assert server.stop() == 0
