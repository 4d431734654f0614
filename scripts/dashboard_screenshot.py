"""Screenshot the Ray dashboard of a running training with a headless browser.

Start a phase with `--dashboard`, then, while it trains:

    python scripts/dashboard_screenshot.py http://127.0.0.1:8265 --out dashboard.png

Uses the first of chromium, chromium-browser, google-chrome or google-chrome-stable on PATH
(or `--browser PATH`); none installed is a one-line message and exit status 3, so CI can skip.
The URL must answer first (`/api/version`, with the token in ~/.ray/auth_token when Ray's
token authentication is on), so a finished run is reported, not screenshotted. A plain
headless browser cannot sign in: with token authentication (Ray's default) the screenshot
shows the sign-in page unless the training ran with `RAY_AUTH_MODE=disabled` (local only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser(explicit: str | None = None) -> str | None:
    """Path of a headless-capable Chromium-family browser, or None."""
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the URL `--dashboard` printed, e.g. http://127.0.0.1:8265")
    parser.add_argument("--out", default="dashboard.png", help="PNG to write")
    parser.add_argument("--browser", default=None, help="browser binary (default: found)")
    parser.add_argument("--page", default="#/overview", help="dashboard page (after the URL)")
    args = parser.parse_args(argv)
    browser = find_browser(args.browser)
    if browser is None:
        print(f"no headless browser found (install one of: {', '.join(BROWSERS)})")
        return 3
    base = args.url.rstrip("/")
    token_file = Path.home() / ".ray" / "auth_token"
    headers = (
        {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        if token_file.is_file()
        else {}
    )
    try:
        request = urllib.request.Request(f"{base}/api/version", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as resp:
            version = json.loads(resp.read()).get("ray_version", "?")
    except OSError as exc:
        print(f"the dashboard at {base} does not answer ({exc}); is the training still running?")
        return 2
    out = Path(args.out).resolve()
    cmd = [
        browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--window-size=1400,900", "--virtual-time-budget=8000", f"--screenshot={out}",
        f"{base}/{args.page.lstrip('/')}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.is_file():
        print(f"browser failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
        return 1
    print(f"wrote {out} (Ray {version} dashboard)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
