"""renderdev's benchmark suite (`invoke bench`): interleaved pairs against an isolated compose project.

Modules: `harness` (the interleaving and the statistics), `stack` (the throw-away stack), `mirror` (the
loopback Blender mirror), `proc` (timed subprocesses), `machine` (what a run was made on), one module per
measurement (`warm_setup`, `preview`, `install`, `queue`, `memory`, `cold`), `jobs` (the rq job functions
the queue pair runs) and `run` (what `invoke bench` calls). Nothing in renderdev imports this package, and
importing it starts nothing.
"""
