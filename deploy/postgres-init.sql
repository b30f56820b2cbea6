-- The bot's own database, next to Synapse's (trust inside the compose network only).
CREATE ROLE cercle LOGIN;
CREATE DATABASE cercle OWNER cercle ENCODING 'UTF8';
