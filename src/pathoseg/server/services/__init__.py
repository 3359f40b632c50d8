"""What the app does, one module per job, over the storage layer (:mod:`pathoseg.server.storage`);
the routers stay thin over these, and the CLI calls them too."""
