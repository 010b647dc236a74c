"""Every Kubernetes manifest in the docs applies as written: each ```yaml block that has an
`apiVersion` is checked against Kubernetes' schemas, strictly (unknown fields are errors),
with kubernetes-validate (PyPI, schemas bundled: no cluster, no network); and the
`proxy.toml` of a ConfigMap among them passes the proxy's own `--check`.

  python3 .ci/manifests.py PROXY_BINARY DOC.md...
"""

import pathlib
import re
import subprocess
import sys
import tempfile

import yaml  # kubernetes-validate's own dependency

BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)


def main(binary, docs):
    checked = 0
    failures = []
    for doc in docs:
        text = pathlib.Path(doc).read_text()
        for number, block in enumerate(BLOCK.findall(text), 1):
            if "apiVersion:" not in block:
                continue  # docker compose, not Kubernetes
            where = f"{doc}, yaml block {number}"
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as manifest:
                manifest.write(block)
                manifest.flush()
                run = subprocess.run(
                    ["kubernetes-validate", "--strict", "--quiet", manifest.name],
                    capture_output=True,
                    text=True,
                )
            if run.returncode != 0:
                failures.append(f"{where}: {run.stdout}{run.stderr}")
            for resource in yaml.safe_load_all(block):
                config = (resource.get("data") or {}).get("proxy.toml")
                if resource.get("kind") == "ConfigMap" and config:
                    failures.extend(check_config(binary, where, config))
            checked += 1
    print(f"{checked} Kubernetes manifests in {', '.join(docs)}: {len(failures)} failing")
    for failure in failures:
        print(failure)
    if failures or checked == 0:
        sys.exit(1)


def check_config(binary, where, config):
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as file:
        file.write(config)
        file.flush()
        run = subprocess.run(
            [binary, "--check", "--config", file.name], capture_output=True, text=True
        )
    if run.returncode != 0:
        return [f"{where}: its proxy.toml: {run.stderr}"]
    return []


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
