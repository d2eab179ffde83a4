"""What no YAML names: hash grid (torch/Triton/tcnn), texture fields, backgrounds, volume
rendering, tetrahedral grids, marching tets, rasterizers, antialiasing and mesh operations."""
