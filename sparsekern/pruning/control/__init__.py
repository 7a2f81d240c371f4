"""What steers a run toward its target: the cubic schedule, STR's threshold controller
(``target``), GMP's masks (``gmp``), the L0 penalty (``regularization``), the lambda controller
(``lambda_control``) and the final gate calibration (``calibration``)."""
