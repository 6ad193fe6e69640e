"""Write the report (report.md and its plots) of one or more run dirs, even running ones.

python -m launch.report runs/ablation_corridor/6 [RUN_DIR ...]
"""

from pipeline.report import main

if __name__ == "__main__":
    main()
