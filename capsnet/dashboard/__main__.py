"""`python -m capsnet.dashboard`: the Visdom server of the capsnet dashboard, in the foreground."""
from __future__ import annotations

import sys

from ..errors import UserError
from .server import DEFAULT_ENV_PATH, serve


def main(argv: list[str] | None = None) -> int:
    from ..config import Config
    from ..cli import ArgumentParser
    defaults = Config.__dataclass_fields__
    parser = ArgumentParser(prog="python -m capsnet.dashboard",
                            description="Run the Visdom server of the capsnet dashboard.")
    parser.add_argument("--host", default=defaults["visdom_host"].default,
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=defaults["visdom_port"].default,
                        help="port to listen on (default: %(default)s)")
    parser.add_argument("--env-path", default=DEFAULT_ENV_PATH,
                        help="where Visdom keeps its environments (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, args.env_path)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
