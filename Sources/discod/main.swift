print("discod")
