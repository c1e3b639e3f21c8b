"""Support for the auto-graded labs in notebooks/labs (nbgrader; see docs/course.md, "Teaching with xlnet_ref").

feedback.py  compare an answer with the expected one: the case, expected vs got, a hint that names
             the mistake when the answer equals a known wrong one
graders.py   one check per graded part of each lab (what the notebooks' test cells call)
suspects.py  Lab 06's five implementations with one hidden bug each, for python -m xlnet_ref.validate
"""
