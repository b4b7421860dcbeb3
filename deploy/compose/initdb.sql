-- The control plane and the catalog each get their own database (both have a `robots` table).
CREATE DATABASE recap_catalog OWNER recap;
