"""The bottom layer every package may import, and which imports none of them: distributed
start/stop, world and precision (`distributed`), stops every rank agrees on (`faults`), file locks
and atomic writes (`files`), chat templates and rendering (`chat_templates`), and the config error
type with the checks every schema shares (`config`)."""
