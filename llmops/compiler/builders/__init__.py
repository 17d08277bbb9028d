"""One module per stage kind: its params type (``<Kind>Params``) and its builder (``add_<kind>``).

``llmops.compiler.compile.BUILDERS`` maps each kind of the stage table to its builder; a stage
module declares the params type it runs on (``def run(params: SftParams, ...)``).
"""
