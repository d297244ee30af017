module early.keel-lab/noquery

go 1.26.0
