"""One module per stage kind: its params type (``<Kind>Params``) and its builder (``add_<kind>``).

``llmops.compiler.compile.BUILDERS`` maps each kind of the stage table to its builder; a stage
module declares the params type it runs on (``def run(params: SftParams, ...)``).

No module here has ``from __future__ import annotations``: a TypedDict's annotations given as text
are each compiled into a ForwardRef when the class is made, which cost every command that
compiles a plan (a dry run among them) a hundredth of its time; a name defined later in a module
or imported only for type checkers is quoted instead.
"""
