"""CampusHub Realtime benchmarks: `python bench/run.py --quick|--full`, see docs/BENCHMARKS.md."""
