"""Routing policies, one per file, behind the interface in ``base.py``; ``factory.make_policy`` builds the one a
config asks for.

The files directly here are SMG's policies (each names the ``smg`` source it mirrors), ``manual``'s assignment
modes (``assignment.py``) and the sticky override (``sticky.py``). ``testbed/`` holds the testbed's own rules,
which SMG does not have (``bounded_load``, ``--assignment-mode min_kv``; docs/beyond-smg.md).

To add a policy: one file with a ``Policy`` subclass (under ``testbed/`` if SMG has no such policy), one line in
``factory.POLICY_BUILDERS`` and the name in ``config.POLICIES`` (the ``--policy`` choices). An assignment mode
is likewise one ``Assignment`` subclass and one line in ``factory.ASSIGNMENT_CLASSES`` (and the
``--assignment-mode`` choices). Nothing else needs reading.
"""
