"""Load testing: scenarios, the headless Locust runner, verdicts and the HTML report.

The Locust users and the scenario files live in the repository's ``loadtests/`` folder
(``LLMPLAT_LOADTEST__DIR`` or ``--loadtests-dir`` points elsewhere).
"""
