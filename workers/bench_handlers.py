"""Handlers used by bench/ (importable by workers as ``workers.bench_handlers:noop``)."""


def noop(**_: object) -> None:
    return None
