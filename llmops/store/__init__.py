"""The content-addressed stage store and its command, `python -m llmops.store list | gc | verify`.

cas.py is the store (entries by fingerprint, atomic publish, locks), integrity.py its content
hashes, registry.py the record of which run folders use which entries, gc.py what may be removed;
command.py is the command line.
"""
