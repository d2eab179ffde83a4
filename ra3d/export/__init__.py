"""Textured mesh export of representations: options, the pipeline (surface → decimation → UV
unwrap → baked albedo), the GLB/OBJ writers, turntables, the viewer page and credits."""
