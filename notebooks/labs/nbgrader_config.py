"""nbgrader configuration of the xlnet_ref labs: run every nbgrader command from notebooks/labs.

    cd notebooks/labs
    nbgrader generate_assignment 01_rel_shift --force   # source/ -> release/ (student version)
    nbgrader autograde 01_rel_shift                      # submitted/<student>/01_rel_shift/ -> autograded/
    nbgrader generate_feedback 01_rel_shift              # autograded/ -> feedback/ (HTML per student)

The course folders follow nbgrader's defaults: source/, release/, submitted/, autograded/, feedback/,
and gradebook.db (the last four are local to the instructor's machine and ignored by git).
"""

c = get_config()  # noqa: F821 (nbgrader provides get_config)

c.CourseDirectory.course_id = "xlnet_ref"
# Students replace exactly this stub; graders.call() turns it into "not written yet".
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
# A lab runs in well under a minute on a laptop CPU; a stuck cell should not hold the grader forever.
c.ExecutePreprocessor.timeout = 300
