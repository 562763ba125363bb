"""Start the QwenTune web app: `python launch.py [--demo] [--lang zh] [--host H --auth user:pw]`."""

from __future__ import annotations

import argparse
import os
import sys

SHUTDOWN_GRACE_S = 3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="QwenTune web app (Gradio). Serves on this machine only "
                                            "unless --host/--share is given together with --auth.")
    p.add_argument("--host", default="127.0.0.1", help="Address to bind. Anything but loopback needs --auth.")
    p.add_argument("--port", type=int, default=7860, help="Port to serve on.")
    p.add_argument("--runs-dir", default="runs", help="Folder of run folders.")
    p.add_argument("--mixes-dir", default="mixes", help="Folder of saved data mixes.")
    p.add_argument("--presets-dir", default=None, help="Folder of training presets (default: presets/train).")
    p.add_argument("--demo", action="store_true", help="Force demo mode: tiny offline model, CPU only.")
    p.add_argument("--lang", default="en", choices=["en", "zh"],
                   help="Default interface language (both are served: /en/ and /zh/).")
    p.add_argument("--auth", default=None, help="user:password required to open the app.")
    p.add_argument("--share", action="store_true",
                   help="Create a public Gradio link through gradio.live (needs --auth and the internet).")
    return p.parse_args(argv)


def quiet_offline_env() -> None:
    """Nothing may leave the machine at start-up: no analytics, no version check, no hub telemetry."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def main(argv=None) -> int:
    args = parse_args(argv)
    from core.serve import UnsafeLaunch, check_launch, gpu_present

    try:
        creds = check_launch(args.host, args.share, args.auth)
    except UnsafeLaunch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_offline_env()
    demo = args.demo or not gpu_present()
    from gui.app import build_server

    server = build_server(runs_dir=args.runs_dir, demo=demo, lang=args.lang, mixes_dir=args.mixes_dir,
                          auth=creds, host=args.host, port=args.port, presets_dir=args.presets_dir)
    return serve(server, args.host, args.port, share=args.share, lang=args.lang, demo=demo)


def serve(server, host: str, port: int, share: bool, lang: str, demo: bool) -> int:
    import uvicorn

    url_host = f"[{host}]" if ":" in host else host
    mode = "demo mode" if demo else "GPU mode"
    # An open browser tab holds a never-ending event stream (Gradio's heartbeat): on SIGTERM or Ctrl-C,
    # give requests a moment to finish, then close such streams instead of waiting for them forever.
    # Training runs are detached processes and keep going; the next server finds them in runs/.
    config = uvicorn.Config(server, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    runner = uvicorn.Server(config)
    if not share:
        other = "zh" if lang == "en" else "en"
        print(f"QwenTune on http://{url_host}:{port}/{lang}/ ({mode}; {other}: http://{url_host}:{port}/{other}/)",
              flush=True)
        runner.run()  # a port in use ends here with uvicorn's message and exit status 1
        return 0
    return _serve_shared(runner, host, port, lang, mode)


def _serve_shared(runner, host: str, port: int, lang: str, mode: str) -> int:
    """--share: serve in a thread, then open Gradio's tunnel (the only outgoing connection, asked for)."""
    import secrets
    import threading
    import time

    from gradio import networking

    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not runner.started:
        if not thread.is_alive():
            print(f"error: cannot serve on {host}:{port}; choose another --port.", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"QwenTune on http://{host}:{port}/{lang}/ ({mode})", flush=True)
    try:
        url = networking.setup_tunnel(local_host=host, local_port=port, share_token=secrets.token_urlsafe(32),
                                      share_server_address=None, share_server_tls_certificate=None)
    except Exception as exc:  # the tunnel needs the internet; the local server keeps running without it
        print(f"warning: could not create the public link ({exc}); serving locally only.", file=sys.stderr)
    else:
        print(f"Public link (password protected): {url.replace('http://', 'https://', 1)}/{lang}/", flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        runner.should_exit = True
        thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
