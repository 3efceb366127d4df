"""The exceptions users see: every failure names the node, op or limit.

One base class (the CLI prints any of them as one `edgec: error:` line and exits 1) and
a kind per cause, so callers and tests classify failures by type, never by message text:

- UnsupportedError: a valid model uses something this compiler does not do (yet).
- InvalidModelError: the model (or a command-line value) is wrong; onnxruntime would
  refuse it too.
- BudgetError: the build does not fit a flash/RAM budget.
- InternalError: the compiler broke a promise of its own (a bug to report).
"""


class CompileError(Exception):
    """A build cannot go on. The message is the whole story; the CLI prints it and exits 1."""

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None):
        where = ""
        if node is not None or op is not None:
            where = f"node '{node}' ({op}): " if node is not None else f"op {op}: "
        text = where + message
        if not isinstance(self, InternalError):  # names from a model stay on one line (\n -> "\\n")
            text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
        super().__init__(text)
        self.node = node
        self.op = op

    def at(self, node: str, op: str) -> "CompileError":
        """The same error, of the same kind, attributed to a node (when it names none yet)."""
        if self.node is not None:
            return self
        return type(self)(str(self), node=node, op=op)


class UnsupportedError(CompileError):
    """A feature of a valid model that this compiler does not support."""


class InvalidModelError(CompileError):
    """The input is wrong: a malformed model, inconsistent shapes, a bad option value."""


class BudgetError(CompileError):
    """The build does not fit the flash or RAM budget."""


class InternalError(CompileError):
    """The compiler produced something it promised not to: a bug."""
