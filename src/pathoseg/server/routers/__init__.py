"""One router per resource, each over the storage layer (laid out like MONAI Label's endpoints/)."""

from pathoseg.server.routers import export, images, jobs, masks, models, users, vocabulary

ROUTERS = [images.router, masks.router, models.router, jobs.router, users.router, export.router, vocabulary.router]
