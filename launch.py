"""Start the QwenTune web app: `python launch.py [--demo] [--host H --auth user:pw] [--lang zh]`."""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="QwenTune web app (Gradio).")
    p.add_argument("--host", default="127.0.0.1", help="Address to bind. Anything but loopback needs --auth.")
    p.add_argument("--port", type=int, default=7860, help="Port to serve on.")
    p.add_argument("--runs-dir", default="runs", help="Folder of run folders.")
    p.add_argument("--mixes-dir", default="mixes", help="Folder of saved data mixes.")
    p.add_argument("--demo", action="store_true", help="Force demo mode: tiny offline model, CPU only.")
    p.add_argument("--lang", default="en", choices=["en", "zh"], help="Interface language.")
    p.add_argument("--auth", default=None, help="user:password required to open the app.")
    p.add_argument("--share", action="store_true", help="Create a public Gradio link (needs --auth).")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from core.serve import UnsafeLaunch, check_launch, gpu_present

    try:
        creds = check_launch(args.host, args.share, args.auth)
    except UnsafeLaunch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Nothing may reach the network at start-up: no analytics, no version check.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = args.demo or not gpu_present()
    from gui.app import build_app

    app = build_app(runs_dir=args.runs_dir, demo=demo, lang=args.lang, mixes_dir=args.mixes_dir)
    print(f"QwenTune on http://{args.host}:{args.port} ({'demo mode' if demo else 'GPU mode'})", flush=True)
    app.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=creds,
        show_error=True, inbrowser=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
