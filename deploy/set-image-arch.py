"""Set the architecture an image's config records: `docker save IMAGE | python3 set-image-arch.py ARCH | docker load`.

Docker's legacy builder records the daemon's own platform on every image it commits, also when the
layers hold another architecture's binaries (an arm64 image built on amd64 through qemu). This rewrites
the config's "architecture" and renames the config by its new digest, as the image format requires;
the layers are untouched. Standard library only.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile


def main() -> None:
    arch = sys.argv[1]
    src = tarfile.open(fileobj=sys.stdin.buffer, mode="r|")
    members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src]  # type: ignore[union-attr]
    files = {m.name: data for m, data in members}
    manifest = json.loads(files["manifest.json"] or b"[]")
    renamed = {}
    for entry in manifest:
        config = json.loads(files[entry["Config"]] or b"{}")
        config["architecture"] = arch
        data = json.dumps(config, separators=(",", ":")).encode()
        name = hashlib.sha256(data).hexdigest() + ".json"
        renamed[entry["Config"]] = (name, data)
        entry["Config"] = name
    out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|")
    for m, data in members:
        if m.name in renamed:
            m.name, data = renamed[m.name]
        elif m.name == "manifest.json":
            data = json.dumps(manifest).encode()
        if data is not None:
            m.size = len(data)
            out.addfile(m, io.BytesIO(data))
        else:
            out.addfile(m)
    out.close()


if __name__ == "__main__":
    main()
