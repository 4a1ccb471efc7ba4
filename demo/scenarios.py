"""What the simulated residents report and how the simulated people answer (text only).

`{b}` is a building as residents say it (e.g. 丽景苑3号楼), `{c}` a compound (丽景苑小区).
Everything here is invented demo text; no real person or event is described.
"""

from __future__ import annotations

CHANNEL_WEIGHTS: dict[str, float] = {
    "hotline_12345": 30,
    "wechat": 25,
    "service_window": 12,
    "grid_patrol": 13,
    "mini_program": 10,
    "micro_wish": 10,
}

# How often each category arrives on a general channel (12345, WeChat, mini-program).
GENERAL_MIX: dict[str, float] = {
    "dispute.neighbour": 12,
    "dispute.family": 4,
    "dispute.property": 6,
    "help.home_service": 8,
    "help.micro_wish": 3,
    "service.enrollment": 4,
    "service.employment": 4,
    "service.social_security": 6,
    "facility.parking": 10,
    "facility.utilities": 12,
    "facility.housing": 5,
    "safety.hazard": 8,
    "environment.sanitation": 8,
    "enquiry.policy": 8,
    "other": 3,
}

CATEGORY_MIX: dict[str, dict[str, float]] = {
    "hotline_12345": GENERAL_MIX,
    "wechat": {**GENERAL_MIX, "dispute.neighbour": 16, "environment.sanitation": 10},
    "mini_program": GENERAL_MIX,
    "service_window": {
        "service.enrollment": 14,
        "service.employment": 14,
        "service.social_security": 24,
        "enquiry.policy": 18,
        "help.home_service": 8,
        "facility.housing": 6,
        "dispute.family": 4,
        "dispute.property": 4,
        "other": 6,
    },
    "grid_patrol": {
        "safety.hazard": 26,
        "environment.sanitation": 20,
        "facility.parking": 14,
        "facility.utilities": 12,
        "facility.housing": 8,
        "dispute.neighbour": 10,
        "help.home_service": 6,
        "other": 4,
    },
    "micro_wish": {"help.micro_wish": 85, "help.home_service": 15},
}

SKILLS = (
    "elderly_care",
    "repair",
    "haircut",
    "medical",
    "driving",
    "legal",
    "tutoring",
    "shopping",
    "digital_help",
    "companionship",
)

# category -> [(title, description, skills needed or None)]
TEMPLATES: dict[str, list[tuple[str, str, tuple[str, ...] | None]]] = {
    "dispute.neighbour": [
        (
            "{b}楼上深夜噪音扰民",
            "反映{b}楼上住户近一周每晚十一点后仍有拖动桌椅、跳绳的声音，多次沟通未果，希望网格员协调。",
            None,
        ),
        (
            "楼道堆放杂物引发邻里争执",
            "{b}楼道被邻居长期堆放纸箱和旧家具，双方因清理问题发生口角，请求调解。",
            None,
        ),
        (
            "装修噪音与邻居产生矛盾",
            "{b}有住户装修，周末早上七点即开始施工，邻里因此多次争吵。",
            None,
        ),
        ("空调外机滴水纠纷", "{b}楼上空调外机冷凝水滴落在楼下窗台和晾衣架上，双方协商不成。", None),
        (
            "宠物犬夜间吠叫扰民",
            "{c}有住户饲养的狗夜间长时间吠叫，邻居多次投诉，双方关系紧张。",
            None,
        ),
        ("楼上漏水殃及楼下", "{b}楼上卫生间漏水导致楼下天花板发霉，赔偿问题谈不拢。", None),
    ],
    "dispute.family": [
        (
            "老人赡养问题家庭矛盾",
            "{b}一位高龄老人反映子女之间因赡养费用分担产生矛盾，希望社区调解。",
            None,
        ),
        (
            "夫妻经常争吵请求社区介入",
            "{b}一户家庭夫妻经常争吵，邻居担心影响孩子，请求调解员介入。",
            None,
        ),
        (
            "兄弟姐妹因老房分配发生争执",
            "家住{c}的几位兄妹因父母留下的老房如何分配产生矛盾，希望社区主持协商。",
            None,
        ),
    ],
    "dispute.property": [
        ("物业费争议", "{c}部分业主认为物业服务不到位拒交物业费，物业公司与业主协商不成。", None),
        (
            "电梯长期故障与物业纠纷",
            "{b}电梯近一个月多次停运，业主与物业对维修费用分担有争议。",
            None,
        ),
        (
            "小区公共收益使用不透明",
            "{c}业主反映停车费、广告费等公共收益去向不明，与物业发生争执。",
            None,
        ),
    ],
    "help.home_service": [
        (
            "高龄独居老人需上门代办养老金认证",
            "{b}一位八十多岁独居老人行动不便，需要志愿者上门协助办理养老金资格认证。",
            ("elderly_care", "digital_help"),
        ),
        (
            "残疾人家庭需代购生活物资",
            "{b}一户残疾人家庭出行困难，希望志愿者每周帮忙代购米面油和药品。",
            ("shopping",),
        ),
        (
            "孕妇需陪同产检",
            "{b}一位孕妇家人在外地务工，希望有人开车陪同前往医院产检。",
            ("driving",),
        ),
        ("卧床老人需要上门理发", "{b}卧床老人需要义剪志愿者上门理发。", ("haircut",)),
        (
            "独居老人家中水龙头漏水需维修",
            "{b}独居老人家中厨房水龙头漏水，老人无法自行维修。",
            ("repair",),
        ),
        ("老人需上门测血压问诊", "{b}高龄老人近期头晕，希望义诊志愿者上门量血压。", ("medical",)),
        (
            "咨询遗嘱和赡养协议法律问题",
            "{b}一位老人希望志愿律师上门讲解赡养协议的写法。",
            ("legal",),
        ),
    ],
    "help.micro_wish": [
        ("微心愿：想要一台收音机", "{b}独居老人希望有一台收音机听评书和新闻。", ("shopping",)),
        (
            "微心愿：孩子需要一套学习用品",
            "困难家庭的孩子即将开学，希望得到书包和文具。",
            ("shopping",),
        ),
        (
            "微心愿：希望有人陪老人聊聊天",
            "{b}空巢老人希望每周有志愿者上门陪伴聊天。",
            ("companionship", "elderly_care"),
        ),
        (
            "微心愿：冬季需要一床厚棉被",
            "{b}困难老人家中被褥单薄，希望过冬能有一床厚棉被。",
            ("shopping",),
        ),
        (
            "微心愿：学会用智能手机视频通话",
            "{b}老人希望志愿者教会用手机和外地子女视频、扫码付款。",
            ("digital_help",),
        ),
        ("微心愿：给孩子辅导数学", "{c}一名困境儿童希望有哥哥姐姐辅导数学作业。", ("tutoring",)),
        ("微心愿：修好家里的旧轮椅", "{b}老人轮椅刹车失灵，希望有人帮忙修理。", ("repair",)),
    ],
    "service.enrollment": [
        (
            "随迁子女入学咨询",
            "外地来务工家庭的孩子今年秋季入学，想了解需要准备哪些材料、划片在哪所学校。",
            None,
        ),
        (
            "流动人口子女转学手续",
            "家住{c}的务工人员孩子需从外地转学，咨询转学手续和居住证明开具。",
            None,
        ),
        ("幼儿园入园名额咨询", "{c}居民咨询随迁子女就近入园的条件。", None),
    ],
    "service.employment": [
        (
            "大龄失业人员求职帮扶",
            "家住{c}的居民失业半年，希望了解“家门口就业”岗位和技能培训。",
            None,
        ),
        ("高校毕业生就业登记", "未就业高校毕业生咨询就业登记和见习岗位。", None),
        ("转移就业劳动者技能培训报名", "农牧区转移就业人员希望报名面点烘焙、母婴护理培训。", None),
    ],
    "service.social_security": [
        ("医保异地备案咨询", "居民需长期在外地就医，咨询医保异地备案如何办理。", None),
        ("低保申请需要哪些材料", "{b}一户困难家庭咨询最低生活保障申请流程和材料。", None),
        ("养老保险补缴咨询", "灵活就业人员咨询城乡居民养老保险补缴。", None),
        ("残疾证办理", "{b}居民家中老人需要办理残疾证，咨询鉴定和办理地点。", None),
    ],
    "facility.parking": [
        ("小区车位不足乱停车", "{c}晚间车辆占用消防通道和绿地停放，希望规划停车位。", None),
        ("僵尸车长期占用车位", "{c}有一辆无牌车停放一年多无人挪动，请协调清理。", None),
        ("车辆堵住单元门口", "{b}门口被私家车堵住，老人轮椅无法出入。", None),
        ("外来车辆占用小区车位", "{c}外来车辆长期占用业主车位，与门卫发生争执。", None),
    ],
    "facility.utilities": [
        ("暖气不热", "{b}室内温度只有十四度，暖气片上热下凉，请协调供热公司。", None),
        ("燃气表显示故障", "{b}住户燃气表显示故障无法充值，家中已停气。", None),
        ("停水未提前通知", "{c}今天上午突然停水，没有收到任何通知。", None),
        ("楼道灯损坏", "{b}楼道声控灯坏了半个月，晚上老人上下楼不安全。", None),
        ("申请安装天然气", "{b}住户申请开通天然气，咨询办理流程。", None),
        ("电压不稳经常跳闸", "{c}最近用电高峰经常跳闸，怀疑线路老化。", None),
    ],
    "facility.housing": [
        ("老旧小区外墙保温脱落", "{b}外墙保温层大面积脱落，担心砸伤行人。", None),
        ("顶层屋面漏雨", "{b}顶层住户反映雨后屋顶渗水，墙面发霉。", None),
        ("非成套住房改造咨询", "{c}居民咨询非成套住房改造的申请条件和时间安排。", None),
        ("单元门禁损坏", "{b}单元门禁损坏，外来人员随意进出。", None),
    ],
    "safety.hazard": [
        (
            "楼道电动车充电存在火灾隐患",
            "{b}一楼楼道有住户私拉电线给电动车充电，存在火灾隐患。",
            None,
        ),
        ("单元内有燃气异味", "{b}单元内闻到明显燃气味，请尽快派人检查。", None),
        ("路面井盖缺失", "{c}主路有一处井盖缺失，夜间容易有人掉落。", None),
        ("消防通道被堵", "{c}消防通道被杂物和车辆堵塞。", None),
        ("楼顶广告牌松动", "{b}楼顶广告牌被大风吹得松动，存在坠落危险。", None),
    ],
    "environment.sanitation": [
        ("垃圾清运不及时", "{c}垃圾箱已满两天无人清运，气味很大。", None),
        ("楼道小广告泛滥", "{b}楼道墙面贴满小广告，希望清理。", None),
        ("绿化带杂草丛生", "{c}绿化带杂草很高，夏天蚊虫多。", None),
        ("积雪未清理路面结冰", "{c}主路积雪未清，路面结冰，老人容易滑倒。", None),
    ],
    "enquiry.policy": [
        ("咨询高龄津贴发放政策", "居民咨询高龄津贴的领取条件和发放时间。", None),
        ("咨询民族团结进步创建活动报名", "居民想报名参加社区“石榴籽”文艺队和邻居节活动。", None),
        ("咨询老年人优待证办理", "{c}居民咨询老年人优待证在哪里办理。", None),
        ("咨询住房公积金提取", "居民咨询租房提取住房公积金的政策。", None),
        ("咨询居住证办理", "外来务工人员咨询居住证办理需要的材料。", None),
    ],
    "other": [
        ("建议延长社区活动室开放时间", "居民建议社区活动室晚上延长开放到九点。", None),
        ("表扬网格员服务热情", "居民来电表扬网格员上门服务热情周到。", None),
        ("反映问题需社区分拨", "反映的问题不好归类，请社区帮忙分拨处理。", None),
    ],
}

UNLOCATABLE_ADDRESSES = (
    "巴彦淖尔市临河区胜利路附近",
    "临河区一处路口旁边的老楼",
    "五原县城西边的平房区",
    "磴口县车站附近",
    "不清楚具体地址，在河边那片小区",
)

NOTES = (
    "已电话联系反映人，约定上门时间",
    "已到现场查看，正在协调相关单位",
    "已与物业沟通，等待回复",
    "已向网格党小组通报情况",
)
PAUSE_REASONS = (
    "等待供热公司排期检修",
    "反映人外出，约定下周上门",
    "等待相关部门答复",
)
ESCALATE_REASONS = (
    "涉及多个部门，需上级协调",
    "超出网格处置权限，申请社区统筹",
    "问题复杂，请求上级支援",
)
RESOLVE_SUMMARIES: dict[str, tuple[str, ...]] = {
    "default": (
        "已上门处理完毕，反映人认可",
        "已协调相关单位解决",
        "已现场处置并做好记录",
    ),
    "facility.utilities": ("已协调供热/燃气公司上门维修，恢复正常",),
    "safety.hazard": ("隐患已排除，已向住户宣传安全知识",),
    "service.enrollment": ("已协助准备入学材料并对接学校",),
    "dispute": ("调解达成协议，双方签字确认",),
    "help": ("志愿者已完成服务，反映人满意",),
}
SESSION_SUMMARIES = (
    "调解员组织双方面对面协商，各自陈述诉求",
    "在居民议事室召开调解会，网格员和楼栋长列席",
    "上门分别做双方工作，初步达成谅解",
)
AGREEMENT_TERMS = (
    "双方同意晚十点后不再产生噪音，如有违反由网格员再次协调",
    "责任方承担维修费用，一周内完成修复",
    "双方同意轮流清理楼道，杂物三日内清走",
    "物业一个月内完成整改，业主按时缴纳物业费",
)
