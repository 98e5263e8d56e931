"""`cbam`: CBAM channel and spatial gates on the square patch grid, residual, ReLU, then the mean."""

from harness.heads.kinds import Kind, register, square_grid

register(Kind(name="cbam", pooler="harness.heads.pool.cbam:build", refuse=square_grid("cbam")))
