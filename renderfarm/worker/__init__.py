"""The render worker, one file per part (nothing is imported here: rq imports `job` in every work horse):

- render_worker: the rq worker (RenderWorker) and `serve()`, which runs one with the parts below;
- job: the rq job function (`render_job`): one mjid rendered and its outcome recorded;
- liveness: the claim (main process) and the heartbeat (work horse) that show the worker is alive;
- lent_database: the one Postgres connection the worker lends its work horses in turn;
- warm_blender: one loaded Blender serving job after job (it runs renderfarm/blender_server.py);
- blender_process: one Blender process per render (it runs renderfarm/blender_scene.py), the fallback;
- preemption: the watcher of the cloud's preemption notice;
- own_manager: a JobManager on connections of its own, and how to close it.

Who starts a worker gives it its settings as an object (renderdev: provisioner.worker).
"""
