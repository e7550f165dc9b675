"""Drive Helm v4 (the Go library, through helm-sdkpy) for tests/e2e/helm.rs.

    python helm_driver.py lint CHART
    python helm_driver.py install KUBECONFIG NAMESPACE RELEASE CHART VALUES_JSON_FILE
    python helm_driver.py upgrade KUBECONFIG NAMESPACE RELEASE CHART VALUES_JSON_FILE
    python helm_driver.py uninstall KUBECONFIG NAMESPACE RELEASE

Prints one JSON document on stdout: the lint messages, or the release (name, namespace,
revision, status, manifest, config). Exits 1 with {"error": "..."} on failure. Install
and upgrade don't wait for readiness: the test's control plane has no nodes, so pods
never run.
"""

import asyncio
import json
import sys

import helm_sdkpy as helm

SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}


def _release(r):
    info = r.get("info") or {}
    return {
        "name": r.get("name"),
        "namespace": r.get("namespace"),
        "revision": r.get("version"),
        "status": info.get("status"),
        "manifest": r.get("manifest", ""),
        "config": r.get("config") or {},
        "notes": info.get("notes", ""),
    }


async def lint(chart):
    cfg = helm.Configuration(namespace="default")
    r = await helm.Lint(cfg).run(chart)
    messages = []
    for m in r.get("Messages") or []:
        err = m.get("Err")
        text = err if isinstance(err, str) else json.dumps(err, sort_keys=True)
        messages.append(
            {
                "severity": SEVERITY.get(m.get("Severity"), str(m.get("Severity"))),
                "path": m.get("Path"),
                "message": text,
            }
        )
    errors = [str(e) for e in (r.get("Errors") or [])]
    return {"messages": messages, "errors": errors}


async def install_or_upgrade(verb, kubeconfig, namespace, release, chart, values_file):
    with open(values_file, encoding="utf-8") as f:
        values = json.load(f)
    cfg = helm.Configuration(namespace=namespace, kubeconfig=kubeconfig)
    if verb == "install":
        r = await helm.Install(cfg).run(release, chart, values=values, wait=False, timeout=120)
    else:
        r = await helm.Upgrade(cfg).run(
            release, chart, values=values, wait=False, timeout=120, reset_values=True
        )
    return _release(r)


async def uninstall(kubeconfig, namespace, release):
    cfg = helm.Configuration(namespace=namespace, kubeconfig=kubeconfig)
    r = await helm.Uninstall(cfg).run(release, wait=True, timeout=120)
    info = (r.get("release") or {}).get("info") or {}
    return {"status": info.get("status"), "info": r.get("info", "")}


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "lint" and len(args) == 1:
        out = asyncio.run(lint(*args))
    elif cmd in ("install", "upgrade") and len(args) == 5:
        out = asyncio.run(install_or_upgrade(cmd, *args))
    elif cmd == "uninstall" and len(args) == 3:
        out = asyncio.run(uninstall(*args))
    else:
        raise SystemExit(__doc__)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        main(sys.argv)
    except helm.HelmError as e:
        json.dump({"error": f"{type(e).__name__}: {e}"}, sys.stdout)
        sys.stdout.write("\n")
        sys.exit(1)
