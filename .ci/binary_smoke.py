"""Runs the release binary with the exact arguments the Helm chart renders, against
kube-test-apiserver (a loopback Kubernetes API), and checks what the chart relies on:

- the arguments parse;
- /healthz and /readyz answer 200 on the port the probes use, /metrics serves Prometheus text;
- leader election takes the Lease the chart's Role names, in the release namespace, held by
  POD_NAME; a second replica (the chart's replicaCount 2) is Ready while it stands by, so
  rollouts and the PodDisruptionBudget are not blocked;
- SIGTERM stops the operator cleanly (exit 0) well within terminationGracePeriodSeconds.

Usage: binary_smoke.py BINARY APISERVER CRD RELEASE_NAMESPACE ARGS_JSON...
(ARGS_JSON: the Deployment args that .ci/chart_check.py writes next to each render.)
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

STARTUP_SECONDS = 30
SHUTDOWN_SECONDS = 30


def fail(message):
    print(f"FAIL {message}", file=sys.stderr)
    raise SystemExit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def post(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def flag(args, name):
    values = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    return values


def wait_for(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    fail(f"timed out after {seconds}s waiting for {what}")


class Operator:
    def __init__(self, binary, args, kubeconfig, namespace, pod_name, log_dir):
        self.port = free_port()
        self.args = [f"--http-addr=127.0.0.1:{self.port}" if a.startswith("--http-addr=") else a
                     for a in args]
        self.pod_name = pod_name
        self.log_path = os.path.join(log_dir, f"{pod_name}.log")
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": log_dir,
            "KUBECONFIG": kubeconfig,
            "POD_NAME": pod_name,
            "POD_NAMESPACE": namespace,
        }
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen([binary] + self.args, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def check_running(self):
        if self.process.poll() is not None:
            self.dump()
            fail(f"{self.pod_name} exited with {self.process.returncode} (args {self.args})")

    def wait_ok(self, path):
        def ok():
            self.check_running()
            return get(self.url(path))[0] == 200
        wait_for(ok, STARTUP_SECONDS, f"{self.pod_name} {path} to answer 200")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(SHUTDOWN_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.dump()
                fail(f"{self.pod_name} did not stop within {SHUTDOWN_SECONDS}s of SIGTERM")
        self.log.close()
        return self.process.returncode

    def dump(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            print(f"--- {self.pod_name} log (last lines)", file=sys.stderr)
            print("".join(f.readlines()[-20:]), file=sys.stderr)


def main():
    binary, apiserver, crd, release_ns, *args_files = sys.argv[1:]
    work = tempfile.mkdtemp(prefix="binary-smoke-")
    kubeconfig = os.path.join(work, "kubeconfig")
    server = subprocess.Popen(
        [apiserver, "--port", "0", "--crd", crd, "--kubeconfig-out", kubeconfig],
        stdout=subprocess.PIPE, text=True,
    )
    operators = []
    try:
        api = server.stdout.readline().strip()
        if not api.startswith("http://127.0.0.1:"):
            fail(f"kube-test-apiserver printed {api!r}")
        for path in args_files:
            with open(path) as f:
                args = json.load(f)
            label = os.path.basename(path).split(".")[0]
            lease_ns = flag(args, "--leader-election-namespace")
            lease_name = flag(args, "--leader-election-lease-name")
            if lease_ns != [release_ns] or len(lease_name) != 1:
                fail(f"{label}: expected leader election in {release_ns}, args {args}")
            for ns in {release_ns, *flag(args, "--namespace")}:
                status = post(f"{api}/api/v1/namespaces",
                              {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
                if status not in (200, 201, 409):
                    fail(f"creating namespace {ns}: HTTP {status}")

            leader = Operator(binary, args, kubeconfig, release_ns, f"{label}-0", work)
            operators.append(leader)
            for path_ in ("/healthz", "/readyz"):
                leader.wait_ok(path_)
            status, body = get(leader.url("/metrics"))
            if status != 200 or "# TYPE" not in body:
                fail(f"{label}: /metrics answered {status}")
            lease_url = (f"{api}/apis/coordination.k8s.io/v1/namespaces/{release_ns}"
                         f"/leases/{lease_name[0]}")

            def holder():
                status, body = get(lease_url)
                return status == 200 and json.loads(body)["spec"].get("holderIdentity")
            held_by = wait_for(holder, STARTUP_SECONDS, f"{label}: Lease {lease_name[0]}")
            if held_by != leader.pod_name:
                fail(f"{label}: Lease held by {held_by!r}, expected {leader.pod_name}")

            standby = Operator(binary, args, kubeconfig, release_ns, f"{label}-1", work)
            operators.append(standby)
            standby.wait_ok("/healthz")
            standby.wait_ok("/readyz")  # a standby replica must be Ready
            if holder() != leader.pod_name:
                fail(f"{label}: the standby replica took the Lease from a live leader")

            for operator in (standby, leader):
                started = time.monotonic()
                code = operator.stop()
                if code != 0:
                    operator.dump()
                    fail(f"{operator.pod_name}: exit code {code} after SIGTERM")
                print(f"{label}: {operator.pod_name} stopped on SIGTERM in "
                      f"{time.monotonic() - started:.1f}s")
            print(f"{label}: args parse, /healthz, /readyz and /metrics answer, Lease "
                  f"{release_ns}/{lease_name[0]} held by POD_NAME, standby Ready")
    finally:
        for operator in operators:
            if operator.process.poll() is None:
                operator.process.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
