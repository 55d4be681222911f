"""Side-by-side benchmark of this registry against CNCF Distribution (issue 4).

`python -m bench` starts both servers itself on loopback, runs each workload against them in
turn (A B A B), and prints medians and the ratio ours / Distribution; `python -m bench limits`
measures the machine's ceilings. See bench/README.md.
"""
