"""`dolg`: DOLG's spatial attention, softplus scores on L2-normalised BatchNorm'd 1x1-conv features, then the mean."""

from harness.heads.kinds import Kind, register, square_grid

register(Kind(name="dolg", pooler="harness.heads.pool.dolg:build", refuse=square_grid("dolg")))
