BEGIN TRANSACTION;
CREATE TABLE images (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	width INTEGER NOT NULL, 
	height INTEGER NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	uncertainty FLOAT, 
	mask_version INTEGER NOT NULL, 
	updated_by VARCHAR(64), 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
INSERT INTO "images" VALUES(1,'img0',48,48,'approved',NULL,1,NULL,'2026-12-06 12:12:26.896184');
INSERT INTO "images" VALUES(2,'img1',48,48,'approved',NULL,1,NULL,'2026-12-06 12:12:28.142174');
INSERT INTO "images" VALUES(3,'img2',48,48,'corrected',NULL,1,'bo','2026-12-06 12:12:31.165186');
CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	progress FLOAT NOT NULL, 
	message VARCHAR(500) NOT NULL, 
	created_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	attempts INTEGER DEFAULT '0' NOT NULL, 
	worker VARCHAR(200), 
	started_at DATETIME, 
	heartbeat_at DATETIME, 
	model_version INTEGER, 
	PRIMARY KEY (id)
);
INSERT INTO "jobs" VALUES(1,'train','done',0.0,'model v1: validation IoU 0.800; active','2026-12-06 12:12:31.484294',NULL,1,NULL,NULL,NULL,NULL);
CREATE TABLE masks (
	id INTEGER NOT NULL, 
	image_id INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	source VARCHAR(16) NOT NULL, 
	user VARCHAR(64), 
	seconds FLOAT NOT NULL, 
	operations JSON NOT NULL, 
	operation_log JSON, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(image_id) REFERENCES images (id)
);
INSERT INTO "masks" VALUES(1,1,1,'import',NULL,0.0,'{}',NULL,'2026-12-06 12:12:26.902595');
INSERT INTO "masks" VALUES(2,2,1,'import',NULL,0.0,'{}',NULL,'2026-12-06 12:12:28.144030');
INSERT INTO "masks" VALUES(3,3,1,'correction','bo',12.5,'{"split": 1}','[{"type": "split", "timestamp": "2026-11-27T10:00:00+00:00", "gland": 1, "other": 2}]','2026-12-06 12:12:31.168298');
CREATE TABLE models (
	id INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	val_iou FLOAT, 
	trained_on JSON NOT NULL, 
	active BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (version)
);
INSERT INTO "models" VALUES(1,1,0.8,'[["img0", 1]]',1,'2026-12-06 12:12:31.485699');
CREATE TABLE users (
	id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	token_hash VARCHAR(64) NOT NULL, 
	role VARCHAR(16) DEFAULT 'annotator' NOT NULL, 
	token_expires_at DATETIME, 
	token_revoked_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (name), 
	UNIQUE (token_hash)
);
INSERT INTO "users" VALUES(1,'ana','990ac1215aa15c12d5aca9596df80ce280b69833e9f7e347067fd76da1149491','admin','2027-03-06 12:12:30.088778',NULL);
INSERT INTO "users" VALUES(2,'bo','4c36cc9d1319a8786d607ef415b94236265c84953f10a4d8cf0247fe4147054a','annotator','2027-03-06 12:12:30.179496',NULL);
CREATE UNIQUE INDEX uq_models_one_active ON models (active) WHERE active;
CREATE UNIQUE INDEX uq_jobs_one_queued ON jobs (kind) WHERE status = 'queued';
CREATE UNIQUE INDEX uq_masks_image_version ON masks (image_id, version);
COMMIT;