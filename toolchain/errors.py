"""The one exception type users see: every failure names the node, op or limit."""


class CompileError(Exception):
    """A build cannot go on. The message is the whole story; the CLI prints it and exits 1."""

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None):
        where = ""
        if node is not None or op is not None:
            where = f"node '{node}' ({op}): " if node is not None else f"op {op}: "
        super().__init__(where + message)
        self.node = node
        self.op = op
