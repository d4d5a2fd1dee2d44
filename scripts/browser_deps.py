"""Make sure the browser test's system packages are installed: Debian's Chromium, its
WebDriver and a CJK font (screenshots of the Chinese page show boxes without one).

Idempotent: does nothing when all are installed; else, as root, installs them with apt-get
(`make test` runs this, so CI on a clean machine gets them); not root: says what to run and
exits 0 (the browser test then skips, except under CI, where it fails).
"""

from __future__ import annotations

import os
import subprocess
import sys

PACKAGES = ("chromium", "chromium-driver", "fonts-wqy-microhei")


def missing() -> list[str]:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\\n", *PACKAGES],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {
        line.split()[0] for line in result.stdout.splitlines() if line.split()[1:2] == ["ii"]
    }
    return [p for p in PACKAGES if p not in installed]


def main() -> int:
    try:
        todo = missing()
    except FileNotFoundError:
        print("browser_deps: not a Debian system (no dpkg-query); install Chromium yourself")
        return 0
    if not todo:
        return 0
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *todo]
    if os.geteuid() != 0:
        print(f"browser_deps: missing {' '.join(todo)}; run as root: {' '.join(command)}")
        return 0
    print(f"browser_deps: installing {' '.join(todo)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    done = subprocess.run(command, env=env, check=False)
    if update.returncode or done.returncode or missing():
        print(f"browser_deps: could not install {' '.join(missing())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
