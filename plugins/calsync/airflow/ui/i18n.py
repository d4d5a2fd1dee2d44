"""The page's labels in Chinese (the OA's users) and English."""

from __future__ import annotations

LANGUAGES = ("zh", "en")

LABELS: dict[str, tuple[str, str]] = {
    # key: (中文, English)
    "title": ("日历同步", "Calendar sync"),
    "subtitle": ("同步日志与概览", "Sync log and overview"),
    "oa_database": ("OA 数据库连接", "OA database connection"),
    "switch": ("切换", "Switch"),
    "overview": ("概览", "Overview"),
    "last_days": ("最近天数", "Last days"),
    "integration": ("集成", "Integration"),
    "last_forward": ("最近一次正向同步", "Last forward run"),
    "last_reverse": ("最近一次反向同步", "Last reverse run"),
    "counts": ("各操作记录数", "Records per action"),
    "failing_users": ("失败的用户", "Failing users"),
    "dead": ("失败投递 (dead)", "Dead deliveries"),
    "pending": ("待投递", "Pending deliveries"),
    "due": ("已到期", "due"),
    "held_deletes": ("被拦截的删除", "held deletions"),
    "oldest": ("最早", "oldest"),
    "unrouted": ("尚未路由的 OA 变更 (outbox)", "OA changes not yet routed (outbox)"),
    "none": ("无", "none"),
    "never": ("从未", "never"),
    "records_of_run": ("本次运行的记录", "records of this run"),
    "dag_run": ("DAG 运行", "DAG run"),
    "failures": ("失败次数", "failures"),
    "last_failure": ("最近失败", "last failure"),
    "attempts": ("尝试次数", "attempts"),
    "last_error": ("最近错误", "last error"),
    "schedule": ("日程", "Schedule"),
    "log": ("同步日志", "Sync log"),
    "filters": ("筛选条件", "Filters"),
    "all": ("全部", "all"),
    "direction": ("方向", "Direction"),
    "forward": ("正向 (邮件系统 → OA)", "forward (suite → OA)"),
    "reverse": ("反向 (OA → 邮件系统)", "reverse (OA → suite)"),
    "forward_short": ("正向", "forward"),
    "reverse_short": ("反向", "reverse"),
    "action": ("操作 / 状态", "Action / status"),
    "problems": ("问题 (失败、冲突、跳过)", "problems (failed, conflict, skipped)"),
    "user": ("用户 / 邮箱", "User / mailbox"),
    "since": ("起始日期", "From"),
    "until": ("截止日期", "To"),
    "text": ("标题或消息包含", "Title or message contains"),
    "run_id": ("运行 ID", "Run id"),
    "page_size": ("每页条数", "Per page"),
    "apply": ("筛选", "Apply"),
    "reset": ("清除", "Reset"),
    "time": ("时间", "Time"),
    "title_col": ("标题", "Title"),
    "message": ("消息", "Message"),
    "run": ("运行", "Run"),
    "total": ("条记录", "records"),
    "page": ("页", "page"),
    "of": ("/", "of"),
    "prev": ("上一页", "Previous"),
    "next": ("下一页", "Next"),
    "no_records": ("没有符合条件的记录。", "No records match."),
    "problems_found": ("已忽略的筛选值", "Filter values ignored"),
    "times_in": ("时间以此时区显示", "Times shown in"),
    "error": ("无法读取 OA 数据库", "Cannot read the OA database"),
    "login_needed": ("请先登录 Airflow。", "Please log in to Airflow first."),
    "login": ("登录", "Log in"),
    "forbidden": (
        "您的 Airflow 账户无权查看 DAG 运行记录。",
        "Your Airflow account may not read DAG runs.",
    ),
    "a_created": ("已创建", "created"),
    "a_updated": ("已更新", "updated"),
    "a_deleted": ("已删除", "deleted"),
    "a_linked": ("已关联", "linked"),
    "a_unlinked": ("已取消关联", "unlinked"),
    "a_relinked": ("已重新关联", "relinked"),
    "a_unchanged": ("未变化", "unchanged"),
    "a_skipped": ("已跳过", "skipped"),
    "a_failed": ("失败", "failed"),
    "a_conflict": ("冲突", "conflict"),
    "a_held": ("已暂停", "held"),
    "a_released": ("已放行", "released"),
    "a_declined": ("会议室已拒绝", "room declined"),
}


def label(key: str, lang: str) -> str:
    pair = LABELS.get(key)
    if pair is None:
        return key
    return pair[0] if lang == "zh" else pair[1]


def action_label(action: str, lang: str) -> str:
    """An action's name in ``lang``; unknown actions as stored."""
    return label(f"a_{action}", lang) if f"a_{action}" in LABELS else action


def pick_language(param: str | None, accept_language: str | None) -> str:
    """``lang`` when given, else the browser's first preference of zh or en (default zh)."""
    if param in LANGUAGES:
        return param
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "zh"
