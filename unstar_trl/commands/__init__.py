"""One module per `unstar` sub-command; each exposes `add_parser(subparsers)`."""
