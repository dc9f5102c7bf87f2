"""File formats shared by the torch side (calibrator, executor) and the torch-free side (cost models,
simulator, report), in one torch-free package both import.

``profile``: the calibrated profile (tidy long parquet + metadata JSON), its schema, reader and writer.
"""
