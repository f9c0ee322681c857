"""Online classification with Ray Serve (``cifar-serve``): the config, the HTTP side of a request
(body, multipart, token, top-k), the deployment whose replicas hold the batch job's own
:class:`~cifar.predict.predictor.Predictor`, and starting and stopping the application.
Imports nothing from training."""
